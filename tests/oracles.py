"""Independent float64 readings of docs/method.md, written plainly in numpy, that the losses are checked against."""
from __future__ import annotations

import numpy as np


def np_softmax(x):
    z = np.exp(x - x.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def oracle_divergence(name, s, t, **kw):
    """Per-row divergence between student logits s and teacher logits t ([N, V] numpy float64)."""
    q, p = np_softmax(np.asarray(s, np.float64)), np_softmax(np.asarray(t, np.float64))
    if name == "fkl":
        return (p * np.log(p / q)).sum(-1)
    if name == "rkl":
        return (q * np.log(q / p)).sum(-1)
    if name == "jsd":
        b = kw.get("beta", 0.1)
        m = b * p + (1 - b) * q
        return b * (p * np.log(p / m)).sum(-1) + (1 - b) * (q * np.log(q / m)).sum(-1)
    if name == "tvd":
        return 0.5 * np.abs(p - q).sum(-1)
    if name == "sfkl":
        a = kw.get("alpha", 0.1)
        return (p * np.log(p / (a * p + (1 - a) * q))).sum(-1)
    if name == "srkl":
        a = kw.get("alpha", 0.1)
        return (q * np.log(q / (a * q + (1 - a) * p))).sum(-1)
    if name == "abkd":
        a, b = kw.get("alpha", 0.2), kw.get("beta", 0.7)
        return (
            -1.0 / (a * b) * (p**a * q**b - a / (a + b) * p ** (a + b) - b / (a + b) * q ** (a + b)).sum(-1)
        )
    if name == "akl":
        mu = kw.get("mu", 0.5)
        out = []
        for pi, qi in zip(p, q, strict=False):
            order = np.argsort(-pi, kind="stable")
            cum = np.cumsum(pi[order])
            j = int(np.argmax(cum >= mu)) if (cum >= mu).any() else len(pi) - 1  # first prefix reaching mu
            head = np.zeros(len(pi), bool)
            head[order[: j + 1]] = True
            err = np.abs(pi - qi)
            gh, gt = err[head].sum(), err[~head].sum()
            w = gh / (gh + gt) if gh + gt > 0 else 0.5
            out.append(w * (pi * np.log(pi / qi)).sum() + (1 - w) * (qi * np.log(qi / pi)).sum())
        return np.array(out)
    raise KeyError(name)


