"""The read models this installation keeps, and the energy rules its settings give them.

Shared by the composition root (`infra.runtime`), backups' restore and the benchmarks, so that
each builds the same projectors from the same settings.
"""

from __future__ import annotations

from datetime import timedelta

from domain.energy import EnergyRules
from domain.usage import EnergySettings
from infra.settings import Settings
from projections.alerts import AlertsProjector
from projections.audit import AuditProjector
from projections.chain import ChainProjector
from projections.commands import CommandsProjector
from projections.devices import DevicesProjector
from projections.energy import EnergyProjector
from projections.engine import Projector
from projections.exports import ExportsProjector
from projections.identity import IdentityProjector


def energy_rules(settings: Settings) -> EnergyRules:
    """The energy fold's rules for this installation's polling interval and meter limit."""
    return EnergyRules.for_polling_interval(settings.polling_interval, max_power_w=settings.max_power_w)


def all_projectors(settings: Settings) -> list[Projector]:
    rules = energy_rules(settings)
    return [
        DevicesProjector(settings.zone, rules), IdentityProjector(), CommandsProjector(), ChainProjector(),
        AuditProjector(), EnergyProjector(rules), ExportsProjector(), AlertsProjector(settings.zone, rules),
    ]


def energy_settings(settings: Settings) -> EnergySettings:
    """The energy fold's rules and the session defaults the settings give."""
    return EnergySettings(
        rules=energy_rules(settings),
        session_threshold_w=settings.session_threshold_w,
        session_min_duration=timedelta(seconds=settings.session_min_duration),
    )
