"""The SQL store's sensitivity tables, plans and validations (a part of
:class:`hwcost.store.sql.SqlStore`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from sqlalchemy import select

from hwcost.bounds import LOSS_MAX, float_problem, int_problem
from hwcost.errors import InvalidMeasurement, StoreError
from hwcost.schema import Plan, Sensitivity, Validation
from hwcost.store.records import DeviceRef, ModelRef
from hwcost.store.rows import shape_key, upsert

__all__ = ["ResultMethods"]


class ResultMethods:
    """What planning produces and consumes besides timings."""

    # -- sensitivities
    def add_sensitivities(self, rows: Sequence[Sensitivity], *, replace: bool = True) -> int:
        """Write a sensitivity table in one transaction (all rows validated first)."""
        for r in rows:
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
        data = [r.model_dump(exclude={"id"}) for r in rows]
        keys = ["model_id", "checkpoint", "quantizer", "calib_fingerprint", "layer",
                "precision", "method"]
        with self.session() as s:
            return upsert(s, Sensitivity, data, keys, replace=replace)

    def sensitivities(self, model: str | ModelRef | int, method: str = "taylor",
                      calib_fingerprint: str | None = None, *, checkpoint: str | None = None,
                      quantizer: str | None = None) -> list[Sensitivity]:
        """A model's sensitivity rows for one method, checkpoint and quantizer.

        ``checkpoint`` / ``quantizer`` / ``calib_fingerprint`` left as None take those of the
        latest stored table among the ones matching what is given; a table of one checkpoint
        is never mixed with another's."""
        with self.session() as s:
            q = select(Sensitivity).where(Sensitivity.model_id == self._model_id(s, model),
                                          Sensitivity.method == method)
            for col, value in ((Sensitivity.checkpoint, checkpoint),
                               (Sensitivity.quantizer, quantizer),
                               (Sensitivity.calib_fingerprint, calib_fingerprint)):
                if value is not None:
                    q = q.where(col == value)
            latest = s.scalars(q.order_by(Sensitivity.created_at.desc(),
                                          Sensitivity.id.desc())).first()
            if latest is None:
                return []
            q = q.where(Sensitivity.checkpoint == latest.checkpoint,
                        Sensitivity.quantizer == latest.quantizer,
                        Sensitivity.calib_fingerprint == latest.calib_fingerprint)
            return list(s.scalars(q.order_by(Sensitivity.id)))

    # -- plans and validations
    def add_plan(self, plan: Plan) -> int:
        with self.session() as s:
            s.add(plan)
            s.flush()
            return plan.id

    def get_plan(self, plan_id: int) -> Plan:
        with self.session() as s:
            plan = s.get(Plan, plan_id)
        if plan is None:
            raise StoreError(f"no plan {plan_id} in the store")
        return plan

    def plans_for(self, model: str | ModelRef | int, device: str | DeviceRef | int, shape: str, *,
                  checkpoint: str | None = None, quantizer: str | None = None) -> list[Plan]:
        """Plans of a model on a device and shape (of one checkpoint and quantizer when
        given), oldest first."""
        with self.session() as s:
            q = select(Plan).where(Plan.model_id == self._model_id(s, model),
                                   Plan.device_id == self._device_id(s, device),
                                   Plan.shape == shape_key(shape))
            if checkpoint is not None:
                q = q.where(Plan.checkpoint == checkpoint)
            if quantizer is not None:
                q = q.where(Plan.quantizer == quantizer)
            return list(s.scalars(q.order_by(Plan.id)))

    def validations_for(self, plan_id: int, *, checkpoint: str | None = None
                        ) -> list[Validation]:
        """Validations of a plan (measured with one checkpoint's weights when given), oldest
        first."""
        with self.session() as s:
            q = select(Validation).where(Validation.plan_id == plan_id)
            if checkpoint is not None:
                q = q.where(Validation.checkpoint == checkpoint)
            return list(s.scalars(q.order_by(Validation.id)))

    def add_validation(self, v: Validation) -> int:
        with self.session() as s:
            s.add(v)
            s.flush()
            return v.id

