"""Run parameters: what a params file may say (:mod:`.schema`), how a file becomes a run
(:mod:`.files`: ``extends``, overrides, variables, paths) and what the environment must offer
before any model loads (:mod:`.environment`). ``python -m rlff_utils.params FILE...`` validates.

The names below are the package's interface; each lives in the module named beside it.
"""

from .environment import check_backends, check_data_files, check_endpoints, check_environment, check_model_access
from .files import (
                    DATA_DIR_DEFAULTS,
                    PATH_FIELDS,
                    load_notebook_params,
                    load_params,
                    parse_set,
                    project_root,
                    project_root_of,
                    write_resolved,
)
from .schema import (
                    TRAINER_DEFAULTS,
                    TRAINER_SET_BY_PROJECT,
                    AnalysisParams,
                    CriticSettings,
                    DataParams,
                    EvalSystem,
                    EvaluationParams,
                    GRPOParams,
                    LearnedCriticParams,
                    ModelRole,
                    ModelRoles,
                    ParamsError,
                    RewardModelParams,
                    RunParams,
                    SimulationParams,
                    ValidationParams,
                    build_trainer_config,
                    policy_precision,
)

__all__ = [
    "AnalysisParams", "CriticSettings", "DATA_DIR_DEFAULTS", "DataParams", "EvalSystem", "EvaluationParams", "GRPOParams",
    "LearnedCriticParams", "ModelRole", "ModelRoles", "PATH_FIELDS", "ParamsError", "RewardModelParams", "RunParams",
    "SimulationParams", "TRAINER_DEFAULTS", "TRAINER_SET_BY_PROJECT", "ValidationParams", "build_trainer_config",
    "check_backends", "check_data_files", "check_endpoints", "check_environment", "check_model_access", "load_notebook_params", "load_params",
    "parse_set", "policy_precision", "project_root", "project_root_of", "write_resolved",
]
