"""Names and paths shared by the workflow and the library; imports nothing heavy (dry runs)."""

from __future__ import annotations

PLANS_IDENTIFIERS = {
    "ExperimentPlanner": "nnUNetPlans",
    "nnUNetPlannerResEncM": "nnUNetResEncUNetMPlans",
    "nnUNetPlannerResEncL": "nnUNetResEncUNetLPlans",
    "nnUNetPlannerResEncXL": "nnUNetResEncUNetXLPlans",
}
TRAINER_NAMES = {
    "lesion_pooling": "nnUNetTrainerMultiTask",
    "attention_fusion": "nnUNetTrainerMultiTaskAttention",
}


def dataset_name(dataset_id: int, name: str) -> str:
    return f"Dataset{int(dataset_id):03d}_{name}"


def plans_identifier(planner: str) -> str:
    try:
        return PLANS_IDENTIFIERS[planner]
    except KeyError:
        raise ValueError(
            f"unknown planner {planner!r}; choose one of {sorted(PLANS_IDENTIFIERS)}"
        ) from None


def trainer_name(head: str) -> str:
    try:
        return TRAINER_NAMES[head]
    except KeyError:
        raise ValueError(f"unknown head {head!r}; choose one of {sorted(TRAINER_NAMES)}") from None


def model_folder_name(trainer: str, plans: str, configuration: str) -> str:
    """nnU-Net's results folder name for a trainer/plans/configuration triple."""
    return f"{trainer}__{plans}__{configuration}"
