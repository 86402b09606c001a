import os

from snakemake.utils import validate

from pancreas_mtl.gpu_slots import parse_time_device_problem
from pancreas_mtl.job_resources import training_cpus, training_mem_mb
from pancreas_mtl.layout import find_images, overlay_labels
from pancreas_mtl.nnunet_env import (
    dataset_name,
    model_folder_name,
    plans_identifier,
    trainer_name,
)

validate(config, workflow.source_path("../schemas/config.schema.yaml"))

RESULTS = config["results_dir"]
# config/gpu.yaml leaves data_dir empty: a forgotten override must not train on the demo
if not config["data_dir"]:
    raise WorkflowError(
        "config key data_dir is not set: give the cohort's root folder, e.g. "
        "--config data_dir=/path/to/cohort (data_dir=demo for the built-in demo cohort)"
    )
# an explicit CUDA device on a machine without a GPU stops here, not days into a CPU run
if workflow.is_main_process:
    DEVICE_PROBLEM = parse_time_device_problem(config["train"]["device"])
    if DEVICE_PROBLEM:
        raise WorkflowError(DEVICE_PROBLEM)
DEMO = config["data_dir"] == "demo"
# a trained model given: predict the images of data_dir only (workflow/rules/model.smk)
PREDICT_ONLY = bool(config["model"])
if PREDICT_ONLY and DEMO:
    raise WorkflowError(
        "config key data_dir: with model set, give a folder of *_0000.nii.gz images to predict"
    )
DATA_DIR = f"{RESULTS}/demo/cohort" if DEMO else config["data_dir"]
if not DEMO and not os.path.isdir(DATA_DIR):
    raise WorkflowError(f"config key data_dir: {DATA_DIR!r} is not a directory")
# reference masks of the test split, kept outside the cohort; evaluate scores the test split with
# them (the demo writes its own)
TEST_LABELS = config["test_labels_dir"] or (
    f"{RESULTS}/demo/test_labels" if DEMO else None
)
if config["test_labels_dir"] and not os.path.isdir(TEST_LABELS):
    raise WorkflowError(
        f"config key test_labels_dir: {TEST_LABELS!r} is not a directory"
    )

DATASET = dataset_name(config["dataset"]["id"], config["dataset"]["name"])
RAW_ROOT = f"{RESULTS}/nnUNet_raw"
PRE_ROOT = f"{RESULTS}/nnUNet_preprocessed"
MODEL_ROOT = f"{RESULTS}/nnUNet_results"
RAW = f"{RAW_ROOT}/{DATASET}"
PRE = f"{PRE_ROOT}/{DATASET}"
PLANS = plans_identifier(config["plan"]["planner"])
CONFIGURATION = config["plan"]["configuration"]
TRAINER = trainer_name(config["train"]["head"])
MODEL_NAME = model_folder_name(TRAINER, PLANS, CONFIGURATION)
MODEL = f"{MODEL_ROOT}/{DATASET}/{MODEL_NAME}"
FOLDS = config["train"]["folds"]
NNUNET_PATHS = {"raw": RAW_ROOT, "preprocessed": PRE_ROOT, "results": MODEL_ROOT}
ENV_NNUNET = "../../envs/nnunet.yaml"
ENV_TOOLS = "../../envs/tools.yaml"

# predict-only: where import_model puts the model, and the images of data_dir (any layout)
IMPORTED_MODEL = f"{RESULTS}/model"
if PREDICT_ONLY:
    if not os.path.exists(config["model"]):
        raise WorkflowError(f"config key model: {config['model']!r} does not exist")
    _imported = os.path.realpath(IMPORTED_MODEL)
    if os.path.commonpath([os.path.realpath(config["model"]), _imported]) == _imported:
        raise WorkflowError(
            f"config key model: {config['model']!r} lies in {IMPORTED_MODEL}, which import_model replaces"
        )
    try:
        IMAGES = find_images(DATA_DIR, recursive=True)
    except (FileNotFoundError, ValueError) as error:
        raise WorkflowError(f"config key data_dir: {error}")

# CPUs and memory of a training job follow its augmentation workers
TRAIN_CPUS = training_cpus(
    config["train"]["data_augmentation_workers"], config["threads"]
)
TRAIN_MEM_MB = training_mem_mb(config["train"]["data_augmentation_workers"])


# light steps run in the Snakemake process, never as a cluster job (model.smk names its own)
if not PREDICT_ONLY:

    localrules:
        write_splits,
        evaluate_validation,
        plot_case_overlays,
        plot_test_overlays,
        plot_training,
        baseline_classifier,


def cohort_files():
    """Every NIfTI file of a user cohort, so edits to it trigger re-ingestion; none for the demo."""
    if DEMO:
        return []
    found = []
    for root, _, names in os.walk(DATA_DIR):
        found.extend(
            os.path.join(root, n) for n in names if n.endswith((".nii.gz", ".nii"))
        )
    return sorted(found)


def fold_checkpoints():
    return expand(f"{MODEL}/fold_{{fold}}/checkpoint_final.pth", fold=FOLDS)


def model_folder(wildcards, input):
    """nnU-Net results folder of the trained model: two levels above a fold checkpoint."""
    return os.path.dirname(os.path.dirname(input.checkpoints[0]))


def output_folder(wildcards, output):
    return os.path.dirname(output[0])


def test_evaluation_inputs(wildcards):
    """Test predictions and labels for `evaluate`, when test labels are known."""
    if TEST_LABELS is None:
        return {}
    return {
        "test_predictions": f"{RESULTS}/predictions/test",
        "test_labels": TEST_LABELS,
    }


def test_overlay_inputs(wildcards):
    """Test labels for the test overlays, when known: they add the reference contours."""
    return {} if TEST_LABELS is None else {"test_labels": TEST_LABELS}


def overlay_report_labels(wildcards, output):
    """Report labels of one case overlay; the rank comes first, so the gallery follows lesion Dice."""
    return overlay_labels(output[0], wildcards.name)
