"""The SQL store's sensitivity tables, plans and validations (a part of
:class:`hwcost.store.sql.SqlStore`)."""

from __future__ import annotations

import json
import math

from sqlalchemy import func, select

from hwcost.bounds import LOSS_MAX, float_problem, int_problem
from hwcost.errors import (
    InvalidMeasurement,
    NoSensitivityTable,
    PlanInvalid,
    SensitivityError,
    StoreError,
)
from hwcost.store.plan_document import PlanDocument
from hwcost.store.records import (
    DeviceRef,
    ModelRef,
    PlanRecord,
    SensitivityRow,
    SensitivityTable,
    ValidationRecord,
)
from hwcost.store.rows import model_ref, shape_key, upsert
from hwcost.store.schema import Device, Model, Plan, Sensitivity, Validation, utcnow

__all__ = ["ResultMethods"]


class ResultMethods:
    """What planning produces and consumes besides timings."""

    # -- sensitivities
    def put_sensitivity_table(self, model: str | ModelRef, table: SensitivityTable, *,
                              replace: bool = True) -> int:
        """Write a sensitivity table of a stored model in one transaction, every row
        validated first; rows of the same key are replaced unless ``replace`` is False.
        Returns the rows written."""
        if not table.calib_fingerprint:
            raise SensitivityError("a sensitivity table needs its calibration fingerprint to be "
                                   "stored")
        if not table.checkpoint or not table.quantizer:
            raise SensitivityError("a sensitivity table needs its checkpoint digest and quantizer "
                                   "key to be stored")
        for r in table.rows:
            for name in ("loss_mse", "stderr"):
                v = getattr(r, name)
                if v is None or math.isnan(v) or math.isinf(v) or v < 0:
                    raise InvalidMeasurement(
                        f"sensitivity {name}={v!r} for {r.layer} [{r.precision}] is not finite >= 0")
            problem = (float_problem("loss_mse", r.loss_mse, LOSS_MAX)
                       or float_problem("stderr", r.stderr, LOSS_MAX)
                       or int_problem("n_samples", r.n_samples, 1))
            if problem:
                raise InvalidMeasurement(f"sensitivity {problem} for {r.layer} [{r.precision}]")
        keys = ["model_id", "checkpoint", "quantizer", "calib_fingerprint", "layer",
                "precision", "method"]
        with self.session() as s:
            model_id = self._model_id(s, model)
            data = [{"model_id": model_id, "checkpoint": table.checkpoint,
                     "quantizer": table.quantizer, "calib_fingerprint": table.calib_fingerprint,
                     "layer": r.layer, "precision": r.precision, "loss_mse": r.loss_mse,
                     "stderr": r.stderr, "method": table.method, "n_samples": r.n_samples,
                     "created_at": utcnow()} for r in table.rows]
            return upsert(s, Sensitivity, data, keys, replace=replace)

    def sensitivity_keys(self, model: str | ModelRef, method: str = "taylor"
                         ) -> list[tuple[str, str, str]]:
        """Distinct (checkpoint, quantizer, calib_fingerprint) of a model's stored tables,
        newest first."""
        with self.session() as s:
            model_id = self._model_id(s, model)
            last = func.max(Sensitivity.id)
            rows = s.execute(select(Sensitivity.checkpoint, Sensitivity.quantizer,
                                    Sensitivity.calib_fingerprint, last)
                             .where(Sensitivity.model_id == model_id,
                                    Sensitivity.method == method)
                             .group_by(Sensitivity.checkpoint, Sensitivity.quantizer,
                                       Sensitivity.calib_fingerprint)
                             .order_by(last.desc())).all()
        return [(c, q, f) for c, q, f, _ in rows]

    def sensitivity_table(self, model: str | ModelRef, method: str = "taylor", *,
                          checkpoint: str | None = None, quantizer: str | None = None,
                          calib_fingerprint: str | None = None) -> SensitivityTable:
        """A model's stored sensitivity table of one method, checkpoint, quantizer and
        calibration set: the one way every reader (planner, CLI, sensitivity jobs) gets one.

        ``checkpoint`` may be a digest prefix (``SensitivityError`` when it matches several).
        Keys left as None take those of the latest stored table among the ones matching what
        is given; a table of one checkpoint is never mixed with another's.
        ``NoSensitivityTable`` (saying which command computes one) when none matches."""
        with self.session() as s:
            row = self.get_model(model, session=s)
            q = select(Sensitivity).where(Sensitivity.model_id == row.id,
                                          Sensitivity.method == method)
            if checkpoint is not None:
                checkpoint = _full_checkpoint(s, q, checkpoint, row.name)
            for col, value in ((Sensitivity.checkpoint, checkpoint),
                               (Sensitivity.quantizer, quantizer),
                               (Sensitivity.calib_fingerprint, calib_fingerprint)):
                if value is not None:
                    q = q.where(col == value)
            latest = s.scalars(q.order_by(Sensitivity.created_at.desc(),
                                          Sensitivity.id.desc())).first()
            if latest is None:
                raise NoSensitivityTable(_no_table(row.name, method, checkpoint, quantizer,
                                                   calib_fingerprint))
            q = q.where(Sensitivity.checkpoint == latest.checkpoint,
                        Sensitivity.quantizer == latest.quantizer,
                        Sensitivity.calib_fingerprint == latest.calib_fingerprint)
            rows = list(s.scalars(q.order_by(Sensitivity.id)))
        return SensitivityTable(
            tuple(SensitivityRow(r.layer, r.precision, float(r.loss_mse), float(r.stderr),
                                 int(r.n_samples)) for r in rows),
            method, latest.calib_fingerprint, latest.checkpoint, latest.quantizer,
            model=model_ref(row))

    # -- plans and validations
    def put_plan(self, plan: PlanRecord) -> int:
        """Store a plan by its model and device fingerprints; returns its number."""
        with self.session() as s:
            row = Plan(model_id=self._model_id(s, ModelRef(plan.model, "", 0, 0)),
                       device_id=self._device_id(s, DeviceRef(plan.device, "", "")),
                       shape=shape_key(plan.shape),
                       body=json.dumps(plan.document.to_json(), sort_keys=True),
                       **{c: getattr(plan, c) for c in _PLAN_COLUMNS})
            return _added_id(s, row)

    def plan(self, plan_id: int) -> PlanRecord:
        """The stored plan ``plan_id``; ``StoreError`` when there is none."""
        with self.session() as s:
            return _plan_record(s, _plan_row(s, plan_id))

    def plans(self, model: str | ModelRef, device: str | DeviceRef, shape: str, *,
              checkpoint: str | None = None, quantizer: str | None = None) -> list[PlanRecord]:
        """Plans of a model on a device and shape (of one checkpoint and quantizer when
        given), oldest first."""
        with self.session() as s:
            return [_plan_record(s, row) for row in
                    self._plan_rows(s, model, device, shape, checkpoint, quantizer)]

    def add_plan(self, plan: Plan) -> int:
        with self.session() as s:
            return _added_id(s, plan)

    def get_plan(self, plan_id: int) -> Plan:
        with self.session() as s:
            return _plan_row(s, plan_id)

    def plans_for(self, model: str | ModelRef | int, device: str | DeviceRef | int, shape: str, *,
                  checkpoint: str | None = None, quantizer: str | None = None) -> list[Plan]:
        """Plans of a model on a device and shape (of one checkpoint and quantizer when
        given), oldest first."""
        with self.session() as s:
            return self._plan_rows(s, model, device, shape, checkpoint, quantizer)

    def _plan_rows(self, s, model, device, shape: str, checkpoint: str | None,
                   quantizer: str | None) -> list[Plan]:
        q = select(Plan).where(Plan.model_id == self._model_id(s, model),
                               Plan.device_id == self._device_id(s, device),
                               Plan.shape == shape_key(shape))
        if checkpoint is not None:
            q = q.where(Plan.checkpoint == checkpoint)
        if quantizer is not None:
            q = q.where(Plan.quantizer == quantizer)
        return list(s.scalars(q.order_by(Plan.id)))

    def put_validation(self, v: ValidationRecord) -> int:
        """Store a validation of the stored plan ``v.plan_id`` on the stored device
        ``v.device`` (fingerprint); returns its number. Latencies must be finite and
        positive; nothing is written otherwise."""
        for name in ("baseline_us", "plan_us", "measured_speedup"):
            value = getattr(v, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise InvalidMeasurement(f"validation {name}={value!r} is not a finite positive "
                                         "number")
        with self.session() as s:
            _plan_row(s, v.plan_id)  # StoreError when there is no such plan
            row = Validation(plan_id=v.plan_id,
                             device_id=self._device_id(s, DeviceRef(v.device, "", "")),
                             **{c: getattr(v, c) for c in _VALIDATION_COLUMNS},
                             **({"created_at": v.created_at} if v.created_at else {}))
            return _added_id(s, row)

    def validations(self, plan_id: int, *, checkpoint: str | None = None
                    ) -> list[ValidationRecord]:
        """Validations of a plan (measured with one checkpoint's weights when given), oldest
        first."""
        with self.session() as s:
            q = (select(Validation, Device.fingerprint)
                 .join(Device, Device.id == Validation.device_id)
                 .where(Validation.plan_id == plan_id))
            if checkpoint is not None:
                q = q.where(Validation.checkpoint == checkpoint)
            return [ValidationRecord(plan_id=row.plan_id, device=fp, id=row.id,
                                     created_at=row.created_at,
                                     **{c: getattr(row, c) for c in _VALIDATION_COLUMNS})
                    for row, fp in s.execute(q.order_by(Validation.id)).all()]


_VALIDATION_COLUMNS = ("checkpoint", "baseline_us", "plan_us", "measured_speedup",
                       "predicted_speedup", "measured_loss_mse", "predicted_loss_mse",
                       "n_eval_samples", "host", "quick", "stable")
"""The validation table's columns a :class:`ValidationRecord` carries under the same name."""

_PLAN_COLUMNS = ("checkpoint", "quantizer", "objective", "max_loss_mse", "predicted_speedup",
                 "predicted_loss_mse", "measured_share")
"""The plan table's columns a :class:`PlanRecord` carries under the same name."""


def _full_checkpoint(s, q, prefix: str, model_name: str) -> str:
    """The stored checkpoint digest that ``prefix`` starts (``prefix`` itself when none, or
    when it is empty: no digest at all matches no table)."""
    if not prefix:
        return prefix
    found = list(s.scalars(q.with_only_columns(Sensitivity.checkpoint).distinct()
                           .where(Sensitivity.checkpoint.startswith(prefix, autoescape=True))))
    if len(found) > 1:
        raise SensitivityError(f"checkpoint {prefix!r} matches several checkpoints of "
                               f"{model_name!r}; give more of the digest")
    return found[0] if found else prefix


def _no_table(model_name: str, method: str, checkpoint: str | None, quantizer: str | None,
              calib_fingerprint: str | None) -> str:
    """The one wording of a missing sensitivity table: what is missing and what computes it."""
    keys = [f"{k} {v}" for k, v in (("checkpoint", checkpoint and checkpoint[:12]),
                                      ("quantizer", quantizer),
                                      ("calibration", calib_fingerprint and calib_fingerprint[:12]))
            if v]
    which = f" of {', '.join(keys)}" if keys else ""
    return (f"no {method} sensitivity table{which} for model {model_name!r}; run "
            f"`hwcost sensitivity {model_name} --calib DATA` first")


def _plan_record(s, row: Plan) -> PlanRecord:
    model, device = s.get(Model, row.model_id), s.get(Device, row.device_id)
    try:
        document = PlanDocument.from_json(json.loads(row.body))
    except (PlanInvalid, json.JSONDecodeError) as e:
        raise PlanInvalid(f"stored plan {row.id} cannot be read: {e}") from None
    return PlanRecord(model=model.fingerprint, device=device.fingerprint, shape=row.shape,
                      document=document, id=row.id, created_at=row.created_at,
                      **{c: getattr(row, c) for c in _PLAN_COLUMNS})


def _plan_row(s, plan_id: int) -> Plan:
    row = s.get(Plan, plan_id)
    if row is None:
        raise StoreError(f"no plan {plan_id} in the store")
    return row


def _added_id(s, row) -> int:
    """Insert one row and return its new id."""
    s.add(row)
    s.flush()
    return row.id
