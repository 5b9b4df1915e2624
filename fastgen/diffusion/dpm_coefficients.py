"""Coefficient rows of :func:`fastgen.ops.sampling_step` for DPM-Solver (multistep and singlestep,
Lu et al. 2022, arXiv:2206.00927 / 2211.01095) and UniPC (Zhao et al. 2023, arXiv:2302.04867), as
diffusers 0.42 computes them.

Every update of these solvers is linear in the step's input sample x, the model output converted
to the solver's variable M (x0 for the data-prediction solvers, eps for the noise-prediction ones),
a few earlier tensors (history h1..h4) and the noise z. The builders here write each update as a
:class:`Lin` -- a linear form over the symbols ``x, m, h1..h4, z`` whose coefficients are float64
arrays over the steps -- following diffusers' algebra term by term, then turn the form into rows
(:func:`rows`): x -> OX, m -> O0 (x0) or OE (eps), hk -> Hk, z -> SZ, plus the columns that convert
the model output into M (PX, PM, and EX, EM, E0 for eps) and the state column (S0 or SE: the step
returns its M as the state the later steps read back as history).

Sigmas are diffusers' (float32 values, here in float64): alpha = 1 / sqrt(sigma^2 + 1) and
sigma_t = sigma * alpha (variance preserving), or alpha = 1 - sigma, sigma_t = sigma (flow
sigmas); lambda = log(alpha) - log(sigma_t).
"""
from __future__ import annotations

import numpy as np
import torch

from ..ops.step_coefficients import _rows

_OUT_COLUMN = {"x": "OX", "h1": "H1", "h2": "H2", "h3": "H3", "h4": "H4", "z": "SZ"}


class Lin(dict):
    """A linear form: symbol -> coefficient (float64 array over the steps, or a float)."""

    __array_ufunc__ = None  # array * Lin must call Lin.__rmul__, not broadcast over the dict

    # rows no step can take (too little history, a higher order to sigma = 0) may hold inf / NaN
    # coefficients; the schedulers never pick them, so numpy's warnings about them are noise

    def __add__(self, other: "Lin") -> "Lin":
        out = Lin(self)
        with np.errstate(invalid="ignore", over="ignore"):
            for k, v in other.items():
                out[k] = out[k] + v if k in out else v
        return out

    def __neg__(self) -> "Lin":
        return Lin({k: -v for k, v in self.items()})

    def __sub__(self, other: "Lin") -> "Lin":
        return self + (-other)

    def __mul__(self, c) -> "Lin":
        with np.errstate(invalid="ignore", over="ignore"):
            return Lin({k: v * c for k, v in self.items()})

    __rmul__ = __mul__

    def __truediv__(self, c) -> "Lin":
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            return Lin({k: v / c for k, v in self.items()})


def sym(name: str) -> Lin:
    return Lin({name: 1.0})


def alpha_sigma(sigmas, flow: bool):
    """(alpha_t, sigma_t, lambda) of diffusers' ``_sigma_to_alpha_sigma_t``, float64."""
    s = np.asarray(sigmas, dtype=np.float64)
    if flow:
        alpha, sig = 1.0 - s, s
    else:
        alpha = 1.0 / (s * s + 1.0) ** 0.5
        sig = s * alpha
    with np.errstate(divide="ignore"):
        lam = np.log(alpha) - np.log(sig)
    return alpha, sig, lam


# -- converting the model output ---------------------------------------------------------------

def conversion(kind: str, prediction_type: str, sigma, flow: bool, thresholded: bool = False) -> dict:
    """Columns converting the model output m into the solver's variable (float64 arrays):

    kind "x0" (dpmsolver++, UniPC predict_x0): x0 = PX x + PM m with
        epsilon: (x - sigma_t m) / alpha,  sample: m,  v: alpha x - sigma_t m,  flow: x - sigma m;
    kind "eps" (dpmsolver, UniPC predict_x0=False): eps = EX x + EM m with
        epsilon: m,  sample: (x - alpha m) / sigma_t,  v: alpha m + sigma_t x.
    ``thresholded``: the kernel's m is the thresholded x0 (x0 = m), and eps = (x - alpha x0) / sigma_t.
    Plus the state column (S0 or SE = 1) and "M", the output column the solver's variable feeds.
    """
    s = np.asarray(sigma, dtype=np.float64)
    alpha, sig, _ = alpha_sigma(s, flow)
    one, zero = np.ones_like(s), np.zeros_like(s)
    if thresholded:
        cols = {"PX": zero, "PM": one}
        if kind == "eps":
            with np.errstate(divide="ignore", invalid="ignore"):
                cols.update(EX=1.0 / sig, EM=zero, E0=-alpha / sig)
    elif kind == "x0":
        px, pm = x0_of_output("x0", prediction_type, s, flow)
        cols = {"PX": px, "PM": pm}
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            ex, em = {"epsilon": (zero, one), "sample": (1.0 / sig, -alpha / sig),
                      "v_prediction": (sig, alpha)}[prediction_type]
        cols = {"EX": ex, "EM": em}
    cols["S0" if kind == "x0" else "SE"] = one
    cols["M"] = "O0" if kind == "x0" else "OE"
    return cols


def x0_of_output(kind: str, prediction_type: str, sigma, flow: bool):
    """(px, pm) with x0 = px x + pm m, the x0 that dynamic thresholding clips (float64 arrays).
    For kind "eps", x0 = (x - sigma_t eps) / alpha of the converted eps, as diffusers does."""
    s = np.asarray(sigma, dtype=np.float64)
    alpha, sig, _ = alpha_sigma(s, flow)
    one, zero = np.ones_like(s), np.zeros_like(s)
    if kind == "x0":
        return {"epsilon": (1.0 / alpha, -sig / alpha), "sample": (zero, one), "v_prediction": (alpha, -sig),
                "flow_prediction": (one, -s)}[prediction_type]
    cols = conversion("eps", prediction_type, s, flow)
    ex, em = cols["EX"], cols["EM"]
    return (1.0 - sig * ex) / alpha, -sig * em / alpha


def rows(out: Lin, conv: dict, n: int) -> torch.Tensor:
    """float32 (n, NUM_COEFS) rows: ``out`` mapped onto the output columns, plus ``conv``."""
    cols = {k: v for k, v in conv.items() if k != "M"}
    for name, coef in out.items():
        column = conv["M"] if name == "m" else _OUT_COLUMN[name]
        cols[column] = cols.get(column, 0.0) + np.broadcast_to(np.asarray(coef, dtype=np.float64), (n,))
    return _rows((n,), torch.device("cpu"), **{k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64))
                                                for k, v in cols.items()})


# -- DPM-Solver ----------------------------------------------------------------------------------

def dpm_first_order(alg: str, t, s, Ms: Lin, x: Lin, flow: bool) -> Lin:
    """One first-order DPM-Solver step from sigma s to sigma t: x is the start sample's form, Ms
    the solver variable at s (diffusers' ``dpm_solver_first_order_update``)."""
    at, st, lt = alpha_sigma(t, flow)
    a0, s0, l0 = alpha_sigma(s, flow)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        h = lt - l0
        if alg == "dpmsolver++":
            return x * (st / s0) - Ms * (at * (np.exp(-h) - 1.0))
        if alg == "dpmsolver":
            return x * (at / a0) - Ms * (st * (np.exp(h) - 1.0))
        if alg == "sde-dpmsolver++":
            return (x * (st / s0 * np.exp(-h)) + Ms * (at * (1.0 - np.exp(-2.0 * h)))
                    + sym("z") * (st * np.sqrt(1.0 - np.exp(-2.0 * h))))
        if alg == "sde-dpmsolver":
            return (x * (at / a0) - Ms * (2.0 * (st * (np.exp(h) - 1.0)))
                    + sym("z") * (st * np.sqrt(np.exp(2.0 * h) - 1.0)))
    raise ValueError(alg)


def _second_order_terms(alg: str, solver_type: str, x: Lin, at, st, a_from, s_from, h,
                        D0: Lin, D1: Lin) -> Lin:
    """The second-order update shared by the multistep and singlestep solvers (the start sample's
    form ``x``, its sigma ``s_from``, the step's h, and the differences D0, D1)."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if alg == "dpmsolver++":
            out = x * (st / s_from) - D0 * (at * (np.exp(-h) - 1.0))
            if solver_type == "midpoint":
                return out - D1 * (0.5 * (at * (np.exp(-h) - 1.0)))
            return out + D1 * (at * ((np.exp(-h) - 1.0) / h + 1.0))
        if alg == "dpmsolver":
            out = x * (at / a_from) - D0 * (st * (np.exp(h) - 1.0))
            if solver_type == "midpoint":
                return out - D1 * (0.5 * (st * (np.exp(h) - 1.0)))
            return out - D1 * (st * ((np.exp(h) - 1.0) / h - 1.0))
        noise = sym("z") * (st * np.sqrt(1.0 - np.exp(-2.0 * h))) if alg == "sde-dpmsolver++" else \
            sym("z") * (st * np.sqrt(np.exp(2.0 * h) - 1.0))
        if alg == "sde-dpmsolver++":
            out = x * (st / s_from * np.exp(-h)) + D0 * (at * (1.0 - np.exp(-2.0 * h)))
            if solver_type == "midpoint":
                return out + D1 * (0.5 * (at * (1.0 - np.exp(-2.0 * h)))) + noise
            return out + D1 * (at * ((1.0 - np.exp(-2.0 * h)) / (-2.0 * h) + 1.0)) + noise
        out = x * (at / a_from) - D0 * (2.0 * (st * (np.exp(h) - 1.0)))  # sde-dpmsolver
        if solver_type == "midpoint":
            return out - D1 * (st * (np.exp(h) - 1.0)) + noise
        return out - D1 * (2.0 * (st * ((np.exp(h) - 1.0) / h - 1.0))) + noise


def dpm_multistep_second(alg, solver_type, t, s0, s1, x: Lin, M0: Lin, M1: Lin, flow: bool) -> Lin:
    """diffusers' ``multistep_dpm_solver_second_order_update``: M0 at s0 (now), M1 at s1 (before)."""
    at, st, lt = alpha_sigma(t, flow)
    a0, sg0, l0 = alpha_sigma(s0, flow)
    _, _, l1 = alpha_sigma(s1, flow)
    with np.errstate(invalid="ignore", divide="ignore"):
        h, h0 = lt - l0, l0 - l1
        r0 = h0 / h
        D1 = (M0 - M1) * (1.0 / r0)
    return _second_order_terms(alg, solver_type, x, at, st, a0, sg0, h, M0, D1)


def dpm_multistep_third(alg, t, s0, s1, s2, x: Lin, M0: Lin, M1: Lin, M2: Lin, flow: bool) -> Lin:
    """diffusers' ``multistep_dpm_solver_third_order_update`` (no sde-dpmsolver variant there)."""
    at, st, lt = alpha_sigma(t, flow)
    a0, sg0, l0 = alpha_sigma(s0, flow)
    _, _, l1 = alpha_sigma(s1, flow)
    _, _, l2 = alpha_sigma(s2, flow)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        h, h0, h1 = lt - l0, l0 - l1, l1 - l2
        r0, r1 = h0 / h, h1 / h
        D1_0, D1_1 = (M0 - M1) * (1.0 / r0), (M1 - M2) * (1.0 / r1)
        D1 = D1_0 + (D1_0 - D1_1) * (r0 / (r0 + r1))
        D2 = (D1_0 - D1_1) * (1.0 / (r0 + r1))
        if alg == "dpmsolver++":
            return (x * (st / sg0) - M0 * (at * (np.exp(-h) - 1.0)) + D1 * (at * ((np.exp(-h) - 1.0) / h + 1.0))
                    - D2 * (at * ((np.exp(-h) - 1.0 + h) / h**2 - 0.5)))
        if alg == "dpmsolver":
            return (x * (at / a0) - M0 * (st * (np.exp(h) - 1.0)) - D1 * (st * ((np.exp(h) - 1.0) / h - 1.0))
                    - D2 * (st * ((np.exp(h) - 1.0 - h) / h**2 - 0.5)))
        if alg == "sde-dpmsolver++":
            return (x * (st / sg0 * np.exp(-h)) + M0 * (at * (1.0 - np.exp(-2.0 * h)))
                    + D1 * (at * ((1.0 - np.exp(-2.0 * h)) / (-2.0 * h) + 1.0))
                    + D2 * (at * ((1.0 - np.exp(-2.0 * h) - 2.0 * h) / (2.0 * h) ** 2 - 0.5))
                    + sym("z") * (st * np.sqrt(1.0 - np.exp(-2.0 * h))))
    raise NotImplementedError(f"diffusers 0.42 has no third-order multistep update for algorithm_type={alg!r}")


def dpm_singlestep_second(alg, solver_type, t, s0, s1, x: Lin, M0: Lin, M1: Lin, flow: bool) -> Lin:
    """diffusers' ``singlestep_dpm_solver_second_order_update``: x is the block's start sample
    (at s1), M1 its solver variable, M0 the one at s0 (now)."""
    at, st, lt = alpha_sigma(t, flow)
    _, _, l0 = alpha_sigma(s0, flow)
    a1, sg1, l1 = alpha_sigma(s1, flow)
    with np.errstate(invalid="ignore", divide="ignore"):
        h, h0 = lt - l1, l0 - l1
        r0 = h0 / h
        D1 = (M0 - M1) * (1.0 / r0)
    return _second_order_terms(alg, solver_type, x, at, st, a1, sg1, h, M1, D1)


def dpm_singlestep_third(alg, solver_type, t, s0, s1, s2, x: Lin, M0: Lin, M1: Lin, M2: Lin, flow: bool) -> Lin:
    """diffusers' ``singlestep_dpm_solver_third_order_update``: x is the block's start sample (at
    s2), M2 its solver variable, M1 and M0 those of the block's later sub-steps."""
    at, st, lt = alpha_sigma(t, flow)
    _, _, l0 = alpha_sigma(s0, flow)
    _, _, l1 = alpha_sigma(s1, flow)
    a2, sg2, l2 = alpha_sigma(s2, flow)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        h, h0, h1 = lt - l2, l0 - l2, l1 - l2
        r0, r1 = h0 / h, h1 / h
        D0 = M2
        D1_0, D1_1 = (M1 - M2) * (1.0 / r1), (M0 - M2) * (1.0 / r0)
        D1 = (D1_0 * r0 - D1_1 * r1) * (1.0 / (r0 - r1))
        D2 = (D1_1 - D1_0) * (2.0 / (r0 - r1))
        mid = solver_type == "midpoint"
        if alg == "dpmsolver++":
            out = x * (st / sg2) - D0 * (at * (np.exp(-h) - 1.0))
            if mid:
                return out + D1_1 * (at * ((np.exp(-h) - 1.0) / h + 1.0))
            return (out + D1 * (at * ((np.exp(-h) - 1.0) / h + 1.0))
                    - D2 * (at * ((np.exp(-h) - 1.0 + h) / h**2 - 0.5)))
        if alg == "dpmsolver":
            out = x * (at / a2) - D0 * (st * (np.exp(h) - 1.0))
            if mid:
                return out - D1_1 * (st * ((np.exp(h) - 1.0) / h - 1.0))
            return (out - D1 * (st * ((np.exp(h) - 1.0) / h - 1.0))
                    - D2 * (st * ((np.exp(h) - 1.0 - h) / h**2 - 0.5)))
        if alg == "sde-dpmsolver++":
            out = (x * (st / sg2 * np.exp(-h)) + D0 * (at * (1.0 - np.exp(-2.0 * h)))
                   + sym("z") * (st * np.sqrt(1.0 - np.exp(-2.0 * h))))
            if mid:
                return out + D1_1 * (at * ((1.0 - np.exp(-2.0 * h)) / (-2.0 * h) + 1.0))
            return (out + D1 * (at * ((1.0 - np.exp(-2.0 * h)) / (-2.0 * h) + 1.0))
                    + D2 * (at * ((1.0 - np.exp(-2.0 * h) + -2.0 * h) / (-2.0 * h) ** 2 - 0.5)))
    raise ValueError(alg)


# -- UniPC ---------------------------------------------------------------------------------------

def _unipc_b(h, order: int, predict_x0: bool, solver_type: str):
    """(hh, h_phi_1, B_h, b) of UniPC's bh1 / bh2 coefficients, b of shape (N, order)."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        hh = -h if predict_x0 else h
        h_phi_1 = np.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1.0
        B_h = hh if solver_type == "bh1" else np.expm1(hh)
        b, factorial = [], 1
        for i in range(1, order + 1):
            b.append(h_phi_k * factorial / B_h)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1.0 / factorial
    return hh, h_phi_1, B_h, np.stack(b, axis=-1)


def _solve(R, b):
    """Batched solve of R rho = b (R (N, k, k), b (N, k)); NaN where R is singular or not finite
    (steps diffusers can never take, or takes into a NaN itself)."""
    out = np.full(b.shape, np.nan)
    ok = np.isfinite(R).all(axis=(1, 2)) & np.isfinite(b).all(axis=1)
    if ok.any():
        ok &= np.abs(np.linalg.det(np.where(ok[:, None, None], R, np.eye(R.shape[-1])))) > 0
    if ok.any():
        out[ok] = np.linalg.solve(R[ok], b[ok][..., None])[..., 0]
    return out


def unipc_update(lams, alphas, sigs, t, s0, past, Ms, order: int, predict_x0: bool, solver_type: str,
                 corrector: bool):
    """UniPC's predictor (``multistep_uni_p_bh_update``) or corrector (``multistep_uni_c_bh_update``)
    from point s0 to point t (index arrays into the sigma tables), as (x coefficient, form of the
    rest): the update is ``coef * x_start + rest``. ``past[k-1]`` are the points of the earlier
    model outputs ``Ms[k]`` (Ms[0] is the one at s0); the corrector's ``Ms[-1]`` is the new output
    at t (its D1_t term)."""
    lam_t, lam_0 = lams[t], lams[s0]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        h = lam_t - lam_0
        hh, h_phi_1, B_h, b = _unipc_b(h, order, predict_x0, solver_type)
        rks = [(lams[p] - lam_0) / h for p in past[:order - 1]] + [np.ones_like(h)]
        D1s = [(Ms[k + 1] - Ms[0]) * (1.0 / rks[k]) for k in range(order - 1)]
        R = np.stack([np.stack(rks, axis=-1) ** (i - 1) for i in range(1, order + 1)], axis=-2)  # (N, k, k)
        if corrector:
            rhos = np.full((len(h), 1), 0.5) if order == 1 else _solve(R, b)
        elif order == 2:
            rhos = np.full((len(h), 1), 0.5)
        elif order > 2:
            rhos = _solve(R[:, :-1, :-1], b[:, :-1])
        else:
            rhos = np.zeros((len(h), 0))
        res = Lin()
        for k, D in enumerate(D1s):
            res = res + D * rhos[:, k]
        if corrector:
            res = res + (Ms[-1] - Ms[0]) * rhos[:, -1]
        if predict_x0:
            coef = sigs[t] / sigs[s0]
            rest = -(Ms[0] * (alphas[t] * h_phi_1))
            scale = alphas[t] * B_h
        else:
            coef = alphas[t] / alphas[s0]
            # sigma_t (e^h - 1) -> alpha_t sigma_s0 / alpha_s0 as sigma_t -> 0 (diffusers: 0 * inf = NaN)
            rest = -(Ms[0] * np.where(sigs[t] == 0, alphas[t] * sigs[s0] / alphas[s0], sigs[t] * h_phi_1))
            scale = sigs[t] * B_h
        if res:  # (diffusers multiplies a zero residual by B_h = inf at sigma_t = 0: NaN; here none)
            rest = rest - res * scale
    return coef, rest
