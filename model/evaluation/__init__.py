"""Reason-Edit evaluation: benchmark readers, metric protocols, reports, Ins-align judging and the driver.

Modules: ``reason_edit`` (readers), ``metrics`` (official / corrected protocols), ``lpips`` and ``clip_score``
(local-weight wrappers of torchmetrics), ``report``, ``grids``, ``judging`` (Ins-align), ``evaluate`` (driver),
``cli``. Nothing heavy is imported here.
"""
