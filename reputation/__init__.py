"""Spot checks, output comparison verdicts and reputation scoring (the pure core; the SQLite store comes next).

* ``compare``: :class:`Verdict`, :func:`compare_outputs` (SSIM/pHash for diffusion pipelines,
  PSNR for single-pass ones, bounded decoding), :func:`compare_receipts`, :class:`Thresholds`.
* ``policy``: :class:`SpotCheckPolicy` (adaptive duplication), :func:`choose_checker`,
  :func:`resolve` (odd one out is blamed), :func:`parse_verification` → a :class:`VerificationMethod`.
* ``scoring``: Beta evidence with asymmetric decay, :func:`score` (lower confidence bound),
  :func:`should_ban`, :func:`equivocation`.
* ``cheats``: cheat modes and honest hardware-like variants (tests, simnet, calibration only).
* ``policy_sim`` and ``calibrate`` (``python -m lpnode.reputation.calibrate --out docs/verification.md``).
"""
