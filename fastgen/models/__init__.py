"""Models as plain nn.Modules: DCGAN, PatchGAN, MLPs for 2-D data."""
