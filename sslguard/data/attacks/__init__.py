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

from sslguard.data.attacks.base import ATTACKS, Attack, build_attack, list_attacks, register_attack
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
