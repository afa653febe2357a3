"""Typed configuration: YAML in, dataclasses out; unknown keys and bad values are errors naming the key.

:mod:`~sslguard.config.machinery` reads, overrides and dumps any config dataclass;
:mod:`~sslguard.config.sections` holds the sections the scripts share (data, attack, SSL);
:mod:`~sslguard.config.detect` the detection run's (:class:`DetectConfig`). Benchmark configs live beside
their benchmarks. Only scripts read configs; library code takes typed keyword arguments. The sections'
``validate()`` reach the attack, backbone and detector registries inside the method, so that reading a
config (and ``sslguard.DetectConfig``) does not import torch.
"""

from sslguard.config.detect import (
    DetectClassifierConfig,
    DetectClusterConfig,
    DetectConfig,
    DetectorsConfig,
    EmbedConfig,
    FusionConfig,
    ReportConfig,
    RetrainConfig,
)
from sslguard.config.machinery import (
    ConfigError,
    apply_overrides,
    check,
    describe_keys,
    dump_yaml,
    find_config,
    from_dict,
    load_config,
    read_yaml,
    shipped_configs,
    to_dict,
)
from sslguard.config.sections import AttackConfig, DataConfig, PoisonConfig, SSLConfig, TrainSSLConfig

__all__ = [
    "AttackConfig", "ConfigError", "DataConfig", "DetectClassifierConfig", "DetectClusterConfig", "DetectConfig",
    "DetectorsConfig", "EmbedConfig", "FusionConfig", "PoisonConfig", "ReportConfig", "RetrainConfig", "SSLConfig",
    "TrainSSLConfig", "apply_overrides", "check", "describe_keys", "dump_yaml", "find_config", "from_dict", "load_config",
    "read_yaml", "shipped_configs", "to_dict",
]
