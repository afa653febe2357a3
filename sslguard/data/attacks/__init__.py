"""Attack library: one file per attack, each registered by name (see :mod:`.base`).

========================  ==================  =========================================================
name                      family              paper
========================  ==================  =========================================================
``htba``                  ssl                 Saha et al. 2022, Backdoor Attacks on Self-Supervised Learning
``ctrl``                  ssl                 Li et al. 2023, An Embarrassingly Simple Backdoor Attack on SSL
``blend``                 ssl                 Chen et al. 2017 (blended trigger on target-class images)
``badnets``               supervised          Gu et al. 2017, BadNets
``blend_supervised``      supervised          Chen et al. 2017 (all-to-one, label flipped)
``sig``                   supervised          Barni et al. 2019, sinusoidal signal
``wanet``                 supervised          Nguyen & Tran 2021, WaNet
``label_consistent``      label_consistent    Turner et al. 2019, Label-Consistent Backdoor Attacks
========================  ==================  =========================================================
"""

from typing import Any

from sslguard.data.attacks.base import ATTACKS, Attack, register_attack
# Importing each attack module registers it (``@register_attack``).
from sslguard.data.attacks.badnets import BadNets
from sslguard.data.attacks.batch import apply_trigger_batch
from sslguard.data.attacks.blend import Blend, BlendSupervised
from sslguard.data.attacks.ctrl import CTRL
from sslguard.data.attacks.htba import HTBA
from sslguard.data.attacks.label_consistent import LabelConsistent
from sslguard.data.attacks.sig import SIG
from sslguard.data.attacks.wanet import WaNet

__all__ = [
    "ATTACKS", "Attack", "build_attack", "list_attacks", "register_attack", "apply_trigger_batch",
    "BadNets", "Blend", "BlendSupervised", "CTRL", "HTBA", "LabelConsistent", "SIG", "WaNet",
]


# Lookups live here, not in base.py: importing this package has registered every built-in attack, so
# base.py never needs to import its own package back (which would be an import cycle).
def build_attack(name: str, **kwargs: Any) -> Attack:
    """Instantiate a registered attack by name, e.g. ``build_attack("htba", target=3, rate=0.5)``."""
    try:
        cls = ATTACKS[name]
    except KeyError:
        raise ValueError(f"attack.name: unknown attack {name!r}; choose from {sorted(ATTACKS)}") from None
    return cls(**kwargs)


def list_attacks() -> list[str]:
    """Names of the registered attacks, sorted."""
    return sorted(ATTACKS)
