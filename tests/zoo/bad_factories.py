"""Factories with bad extras, for the one-line errors of ``hwcost run``."""

from __future__ import annotations

from tests.zoo.families import bert, token_reconstruction_loss


def _with(**extras):
    model, inputs, good = bert()
    return model, inputs, {**good, **extras}


def mean_loss():
    return _with(loss_fn=lambda m, b: token_reconstruction_loss(m, b).mean())


def nan_loss():
    return _with(loss_fn=lambda m, b: token_reconstruction_loss(m, b) * float("nan"))


def str_batches():
    return _with(calibration=["some text", "more text"])


def one_batch_not_a_list():
    model, inputs, good = bert()
    return _with(calibration=good["calibration"][0])
