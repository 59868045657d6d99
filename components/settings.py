"""The settings schema: every key a config may hold, and the part of it each step gets.

No TensorFlow here: the CLI validates a config before any heavy import, and each step
re-validates its own settings class from its `custom_config` with these same classes,
so the code inside a step reads typed attributes, never nested dicts.
"""
from __future__ import annotations

from typing import Literal, NamedTuple, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator


# train.steps_per_execution: auto runs up to this many batches per compiled call when
# DataCheck's counts size the epoch.
AUTO_STEPS_PER_EXECUTION = 50


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Backbone(NamedTuple):
    keras_class: str
    # As Keras' preprocess_input modes: caffe = RGB to BGR minus the ImageNet means,
    # tf = [-1, 1]; none: the network normalizes inside its own graph and takes [0, 255].
    normalization: Literal["caffe", "tf", "none"]
    min_size: int
    takes_alpha: bool = False


# The one list of backbones (tf.keras.applications without the top): the config's allowed
# values, the model builder (components/backbones.py) and `xfer weights fetch --backbone`
# all read it, so adding a backbone is one line here.
BACKBONES: dict[str, Backbone] = {
    "vgg16": Backbone("VGG16", "caffe", 32),
    "mobilenet_v2": Backbone("MobileNetV2", "tf", 32, takes_alpha=True),
    "resnet50": Backbone("ResNet50", "caffe", 32),
    "efficientnet_b0": Backbone("EfficientNetB0", "none", 32),
}
BackboneName = Literal[tuple(BACKBONES)]

StrategyKind = Literal["auto", "tpu", "multi_worker", "mirrored", "default"]
Optimizer = Literal["adam", "rmsprop", "sgd"]


class SpansConfig(_Strict):
    window: int = Field(
        1, ge=1, description="Train on the newest N spans of the train split ({SPAN} in its pattern); "
                             "the other splits (eval) come from the newest span only.")


class DriftConfig(_Strict):
    """Thresholds on the L-infinity distance between the newest span's train split and the
    previous span's: the largest change in any one share (0.2 = some class, format or size
    bucket moved by 20 points). null: not checked."""
    label_linf: Optional[float] = Field(0.2, ge=0.0, le=1.0, description="Label distribution.")
    format_linf: Optional[float] = Field(0.2, ge=0.0, le=1.0, description="Image format mix (JPEG, PNG, ...).")
    size_linf: Optional[float] = Field(
        0.2, ge=0.0, le=1.0, description="Image sizes: the longer side in power-of-two buckets (<32, 32-63, ...).")


class DataConfig(_Strict):
    builtin: Optional[Literal["digits"]] = Field(
        None, description="An embedded dataset, made into TFRecords at first use (offline).")
    input_base: Optional[str] = Field(
        None, description="Folder (local or gs://) holding the TFRecords of tf.Example.")
    splits: dict[str, str] = Field(
        default_factory=dict,
        description="Split name -> file pattern under input_base, e.g. {train: 'train/*', eval: 'eval/*'}. "
                    "Empty: one input, hash-split by `hash_buckets`.")
    pattern: str = Field("*", description="File pattern under input_base when `splits` is empty.")
    hash_buckets: dict[str, int] = Field(
        default_factory=lambda: {"train": 4, "eval": 1},
        description="Hash-split ratios used when `splits` is empty.")
    image_key: str = Field("image", description="The tf.Example feature holding the encoded image bytes.")
    label_key: str = Field(
        "label", description="The tf.Example feature holding the label: an integer in [0, classes), or a "
                             "string (the labels then get a vocabulary).")
    labels_file: Optional[str] = Field(
        None, description="labels.txt, one class name per line, line i naming label i "
                          "(with `builtin`, the embedded dataset's).")
    num_classes: Optional[int] = Field(
        None, ge=2, description="The number of classes when there is no labels_file (labels 0 to "
                                "num_classes - 1).")
    schema_path: Optional[str] = Field(
        None, description="A curated schema.pbtxt imported with ImportSchemaGen; SchemaGen infers one if unset.")
    on_anomaly: Literal["fail", "warn"] = Field(
        "fail", description="ExampleValidator anomalies stop the run before Transform (fail) or are "
                            "printed and the run goes on (warn).")
    on_bad_image: Literal["fail", "skip"] = Field(
        "fail", description="A record whose image does not decode, or whose label is missing or outside "
                            "the classes, stops the run, naming it (fail), or is dropped and counted (skip).")
    max_bad_fraction: float = Field(
        0.01, ge=0.0, le=1.0, description="With on_bad_image: skip, the most of a split that may be "
                                          "dropped; more fails the run (the data is broken, not noisy).")
    max_pixels: int = Field(
        40_000_000, ge=1, le=1_000_000_000, strict=True,
        description="A training or eval image whose header says width x height (x frames, for a GIF) is above "
                    "this is a bad image (data.on_bad_image), never decoded: a 1 MB PNG can say 20000x20000, "
                    "1.2 GB decoded. Default: serving.max_pixels' default, so the images trained on are the "
                    "ones served. A whole number, at most 1_000_000_000 (about 15 GB to decode).")
    spans: SpansConfig = Field(
        default_factory=SpansConfig, description="Scheduled data: which spans a run trains on, with {SPAN} "
                                                 "in the split patterns (e.g. span-{SPAN}/train/*).")
    drift: DriftConfig = Field(
        default_factory=DriftConfig,
        description="Drift between spans, checked when the train pattern has {SPAN} and an older span "
                    "exists; over a threshold, data.on_anomaly decides (fail stops before Transform).")

    @model_validator(mode="after")
    def _window_needs_span(self):
        if self.spans.window > 1:
            if "train" not in self.splits:
                raise ValueError(f"data.spans.window is {self.spans.window} but data.splits has no train "
                                 f"pattern: the window applies to the train split; set data.splits, e.g. "
                                 f"{{train: 'span-{{SPAN}}/train/*', eval: 'span-{{SPAN}}/eval/*'}}")
            pattern = self.splits["train"]
            if "{SPAN" not in pattern:
                raise ValueError(f"data.spans.window is {self.spans.window} but the train pattern "
                                 f"'{pattern}' has no {{SPAN}}: put {{SPAN}} where the span number is, "
                                 f"e.g. splits: {{train: 'span-{{SPAN}}/train/*'}}")
            if "{VERSION" in pattern:
                raise ValueError("data.spans.window > 1 with {VERSION} in the train pattern is not "
                                 "supported: each span's newest version cannot be chosen; drop {VERSION}")
        return self

    @model_validator(mode="after")
    def _one_source(self):
        if self.builtin is None and self.input_base is None:
            raise ValueError("data needs either `builtin: digits` or `input_base: <folder of TFRecords>`")
        if self.builtin is not None and self.input_base is not None:
            raise ValueError("data.builtin and data.input_base are exclusive; set one")
        if not self.splits and not ({"train", "eval"} <= set(self.hash_buckets)):
            raise ValueError("data.hash_buckets must name the splits 'train' and 'eval'")
        if self.splits and not ({"train", "eval"} <= set(self.splits)):
            raise ValueError(f"data.splits must name 'train' and 'eval'; got {sorted(self.splits)}")
        return self


class HeadConvConfig(_Strict):
    """A Conv2D on the base's feature map, then BatchNormalization, before the pooling: the
    Russian tutorial's EfficientNetB0 head (Conv2D(7, 7), BN, GAP, Dropout, Dense 512)."""
    filters: int = Field(ge=1, description="Output channels of the Conv2D.")
    kernel: int = Field(3, ge=1, description="Kernel side (kernel x kernel).")
    padding: Literal["valid", "same"] = Field(
        "valid", description="valid (Keras' default): the map shrinks by kernel - 1, so the kernel must fit the "
                             "base's feature map (7 x 7 for a 224 px input); same: the map keeps its size.")
    activation: Optional[str] = Field(None, description="A Keras activation name; null: linear, as Keras' default.")
    batch_norm: bool = Field(
        True, description="BatchNormalization after the Conv2D. It trains with the head in phase 1 (batch "
                          "statistics, moving statistics updated) and keeps training in phase 2: it normalizes "
                          "the features the fine-tuned base now produces; the base's own BatchNorm stays frozen.")


class HeadConfig(_Strict):
    conv: Optional[HeadConvConfig] = Field(
        None, description="A Conv2D (+ BatchNormalization) before the pooling, e.g. {filters: 7, kernel: 7}; "
                          "null: none.")
    pool_dropout: float = Field(
        0.0, ge=0.0, lt=1.0, description="Dropout right after the pooling, before any Dense layer (the Russian "
                                         "head's GAP, Dropout 0.2, Dense 512); 0: none.")

    @model_serializer(mode="wrap")
    def _unused_pieces_left_out(self, handler):
        # A head without a conv or pool dropout dumps as it did before they existed: the
        # model card's head line and the Trainer's settings stay as they were.
        out = handler(self)
        if isinstance(out, dict):
            if self.conv is None:
                out.pop("conv", None)
            if not self.pool_dropout:
                out.pop("pool_dropout", None)
        return out

    pooling: Literal["avg", "max", "flatten"] = Field(
        "avg", description="How the backbone's feature map becomes a vector: global average or max "
                           "pooling, or flatten.")
    dense: list[int] = Field(default_factory=list, description="Units of hidden Dense layers, in order.")
    activation: str = Field("relu", description="Activation of the hidden Dense layers (a Keras name).")
    dropout: float = Field(
        0.0, ge=0.0, lt=1.0, description="Dropout rate after each hidden Dense layer, or before the output "
                                         "layer when there is none (0: no dropout).")


class ModelConfig(_Strict):
    backbone: BackboneName = Field(
        "mobilenet_v2", description="The ImageNet network under the new head (tf.keras.applications "
                                    "without its top); each owns its input normalization.")
    weights: str = Field("imagenet", description="imagenet | none | path to a weights file (local or gs://)")
    alpha: float = Field(1.0, gt=0.0, description="MobileNetV2 width multiplier.")
    image_size: int = Field(
        224, ge=1, description="Images are resized to image_size x image_size pixels; at least the "
                               "backbone's minimum (32).")
    head: HeadConfig = Field(
        default_factory=HeadConfig, description="The new classification head on the backbone's features.")

    @model_validator(mode="after")
    def _size_fits_backbone(self):
        minimum = BACKBONES[self.backbone].min_size
        if self.image_size < minimum:
            raise ValueError(f"image_size {self.image_size} is below {self.backbone}'s minimum of "
                             f"{minimum} px; set model.image_size to {minimum} or more")
        return self


class EarlyStoppingConfig(_Strict):
    monitor: str = Field("val_loss", description="A logged metric, e.g. val_loss or val_accuracy.")
    patience: int = Field(2, ge=0, description="Epochs without improvement before the phase stops.")
    min_delta: float = Field(0.0, ge=0.0, description="The least change of monitor that counts as an "
                                                      "improvement.")
    restore_best_weights: bool = Field(
        True, description="When the phase ends, go back to the weights of its best epoch.")


class _PhaseSchedule(_Strict):
    """The learning-rate schedule of one phase, stepped per optimizer step."""
    schedule: Literal["constant", "cosine", "one_cycle"] = Field(
        "constant", description="constant: learning_rate throughout; cosine: from learning_rate down to "
                                "~0 over the phase's steps after the warm-up; one_cycle: fastai's "
                                "fit_one_cycle (cosine up from learning_rate/25 to learning_rate over "
                                "the warm-up, 25% of the phase when warmup_epochs is 0, then cosine "
                                "down to learning_rate/1e5).")
    warmup_epochs: float = Field(
        0.0, ge=0.0, description="Epochs (fractions allowed) of linear warm-up from ~0 to learning_rate "
                                 "before the schedule (with one_cycle: the length of its rising part).")

    @model_validator(mode="after")
    def _warmup_within_phase(self):
        if self.epochs and self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs:g}) is longer than the phase "
                             f"(epochs: {self.epochs}); set warmup_epochs to at most {self.epochs}")
        return self


class TransferConfig(_PhaseSchedule):
    epochs: int = Field(3, ge=0, description="Epochs training the new head on the frozen base (0 skips "
                                             "phase 1).")
    learning_rate: float = Field(1e-3, gt=0, description="Phase 1's learning rate (with a schedule, its peak).")
    optimizer: Optimizer = Field("adam", description="Phase 1's optimizer.")
    early_stopping: Optional[EarlyStoppingConfig] = Field(
        None, description="Stop phase 1 when `monitor` stops improving (null: run every epoch).")
    cache_features: Literal["auto", "on", "off"] = Field(
        "auto", description="Train phase 1 on the frozen base's features, computed once "
                            "(auto: when phase 1 has no augmentation).")

    @field_validator("cache_features", mode="before")
    @classmethod
    def _yaml_on_off(cls, v):
        # YAML 1.1 reads a bare on/off as a boolean.
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v


class FineTuneConfig(_PhaseSchedule):
    enabled: bool = Field(True, description="Run phase 2 after phase 1; false stops after phase 1.")
    epochs: int = Field(3, ge=0, description="Phase 2's epochs, numbered after phase 1's.")
    learning_rate: float = Field(
        1e-5, gt=0, description="Phase 2's learning rate (with a schedule, its peak), usually 10 to 100 "
                                "times below phase 1's.")
    base_lr_factor: float = Field(
        1.0, gt=0.0, le=1.0, description="The unfrozen base layers learn at learning_rate x this, the head "
                                         "at learning_rate (fastai's discriminative rates); exact for every "
                                         "optimizer (adam, rmsprop and sgd alike).")
    optimizer: Optimizer = Field("adam", description="Phase 2's optimizer (a new one, not phase 1's).")
    from_layer: Optional[str] = Field(
        None, description="Unfreeze the base from this layer on: the layer and every base layer after it "
                          "train in phase 2, the layers before it stay frozen (BatchNorm layers always "
                          "stay frozen). A layer name of the backbone, e.g. block5_conv1 for vgg16; a name "
                          "that is not a layer of it is a preflight error listing the closest names. "
                          "null: `fraction` decides.")
    fraction: float = Field(
        0.2, gt=0.0, le=1.0, description="With no from_layer: unfreeze this top fraction of the base's "
                                         "layers (0.2: the last 20%).")
    early_stopping: Optional[EarlyStoppingConfig] = Field(
        None, description="Stop phase 2 when `monitor` stops improving (null: run every epoch).")


class AugmentConfig(_Strict):
    horizontal_flip: bool = Field(False, description="Mirror images left-right at random.")
    vertical_flip: bool = Field(False, description="Flip images upside down at random.")
    rotation: float = Field(0.0, ge=0.0, le=1.0, description="Fraction of a full turn (40 degrees ~ 0.11).")
    zoom: float = Field(0.0, ge=0.0, lt=1.0, description="Zoom in or out at random by up to this fraction "
                                                         "of the image's size.")
    translation: float = Field(0.0, ge=0.0, lt=1.0, description="Shift at random by up to this fraction of "
                                                                "the image's width and height.")
    contrast: float = Field(0.0, ge=0.0, lt=1.0, description="Change the contrast at random by a factor in "
                                                             "[1 - contrast, 1 + contrast].")
    shear: float = Field(
        0.0, ge=0.0, lt=90.0, description="Shear at random by an angle in degrees drawn from [-shear, shear], as "
                                          "Keras' ImageDataGenerator(shear_range=shear) in tf-keras 2.16 (where the "
                                          "unit is degrees: the Chinese recipe's shear_range=0.2 is 0.2 degrees "
                                          "there; 0.2 radians = 11.5 degrees in the Keras of 2017 it was written "
                                          "for, before keras-team/keras#8868 made the unit degrees).")
    mixup: float = Field(
        0.0, ge=0.0, description="MixUp's Beta(alpha, alpha) (0: off; timm uses 0.8): each training batch "
                                 "blended with itself reversed, labels likewise (soft labels).")
    cutmix: float = Field(
        0.0, ge=0.0, description="CutMix's Beta(alpha, alpha) (0: off; timm uses 1.0): a box of the "
                                 "reversed batch pasted in, labels by area. With mixup too, each batch "
                                 "takes one of the two at random (timm's switch_prob 0.5).")

    def any(self) -> bool:
        """Any per-image random layer (flip, rotation, ...); MixUp and CutMix are `mixes()`."""
        return any(v for k, v in self.model_dump().items() if k not in ("mixup", "cutmix"))

    def mixes(self) -> bool:
        return bool(self.mixup or self.cutmix)


class TrainConfig(_Strict):
    batch_size: int = Field(32, ge=1, description="Examples per training step, in both phases.")
    steps_per_epoch: Optional[int] = Field(None, ge=1, description="Default: one pass over the train split.")
    shuffle_buffer: int = Field(1024, ge=1, description="Examples in the train split's shuffle buffer.")
    seed: int = Field(42, description="The Trainer's random seed: initial weights, shuffling, augmentation, "
                                      "MixUp and CutMix draws.")
    transfer: TransferConfig = Field(
        default_factory=TransferConfig, description="Phase 1, transfer: the base frozen (BatchNorm in "
                                                    "inference mode), the new head trained.")
    fine_tune: FineTuneConfig = Field(
        default_factory=FineTuneConfig, description="Phase 2, fine-tune: the top of the base unfrozen and "
                                                    "trained with the head at a lower learning rate.")
    augment: AugmentConfig = Field(
        default_factory=AugmentConfig, description="Random augmentation on the fly, training split only "
                                                   "(never in evaluation or serving).")
    strategy: StrategyKind = Field(
        "auto", description="auto: TPU if configured or found, multi-worker if TF_CONFIG names "
                            "several workers, mirrored if several GPUs, else default.")
    tpu: Optional[str] = Field(None, description="TPU name or grpc:// address ('local' on a TPU VM).")
    devices: Optional[list[str]] = Field(
        None, description="Devices for the mirrored strategy (default: all GPUs).")
    mixed_precision: Literal["auto", "off", "mixed_float16", "mixed_bfloat16"] = Field(
        "auto", description="auto: mixed_bfloat16 on TPU, mixed_float16 on GPU, off on CPU.")
    steps_per_execution: Union[Literal["auto"], int] = Field(
        "auto", description=f"Batches per compiled call. auto: up to {AUTO_STEPS_PER_EXECUTION} when "
                            "DataCheck's counts size the epoch (nothing extra is read), else 1. A number: that "
                            "many (TPUs want many), counting the records in one read when no counts exist.")

    @field_validator("steps_per_execution", mode="before")
    @classmethod
    def _auto_or_whole(cls, v):
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            return v
        raise ValueError(f"{v!r} is not a choice: give auto (up to {AUTO_STEPS_PER_EXECUTION} batches per call "
                         "when DataCheck counted the examples) or a whole number of batches per compiled call, "
                         "1 or more, e.g. 50")

    resume: bool = Field(
        True, description="Back up training state every epoch and resume from it when a killed "
                          "Trainer is re-run with the same inputs.")
    reports: bool = Field(True, description="Curves, confusion matrix and an image grid as PNG, "
                                            "and TensorBoard logs, in the model run folder.")
    warm_start: Literal["none", "served"] = Field(
        "none", description="served: both phases start from the weights of the model being served "
                            "(head included) when the class list and model are unchanged; otherwise "
                            "model.weights, and the Trainer says why. With it, transfer.epochs: 0 skips "
                            "phase 1. The Trainer then re-runs every run (its base model is re-read).")
    class_weight: Literal["none", "balanced"] = Field(
        "none", description="Weight each class's examples in the training loss, both phases: none "
                            "(all 1), or balanced (n_train / (n_classes * n_class), from DataCheck's "
                            "train label counts; scikit-learn's formula), for imbalanced classes.")
    label_smoothing: float = Field(
        0.0, ge=0.0, lt=0.5, description="Both phases train on targets one_hot*(1-e) + e/K (K classes); "
                                         "validation loss and accuracy stay on the true labels.")

    @model_validator(mode="after")
    def _cache_needs_plain_phase1(self):
        if self.transfer.cache_features == "on" and self.augment.any():
            raise ValueError(
                "transfer.cache_features is 'on' but train.augment is set: cached features are "
                "computed once, so phase 1 would never see an augmented image; set "
                "cache_features to auto (cache only without augmentation) or off, or drop augment")
        if self.transfer.cache_features == "on" and self.augment.mixes():
            which = " and ".join(k for k in ("mixup", "cutmix") if getattr(self.augment, k))
            raise ValueError(
                f"transfer.cache_features is 'on' but train.augment.{which} is set: cached features "
                f"are computed once from whole images, so phase 1 could never train on mixed images; "
                f"set cache_features to auto (phase 1 then trains on images) or off, or drop {which}")
        return self


class EvalConfig(_Strict):
    # Accuracy and its drops are fractions: a threshold outside [0, 1] could never pass.
    min_accuracy: Optional[float] = Field(
        0.0, ge=0.0, le=1.0, description="Bless only when eval accuracy >= this (null: no value threshold).")
    max_drop: Optional[float] = Field(
        0.0, ge=0.0, le=1.0,
        description="Bless only when accuracy is at most this much below the model being served "
                    "(absolute; null: no change threshold).")

    max_drop_relative: Optional[float] = Field(
        None, ge=0.0, le=1.0, description="Also (or instead) a relative drop, e.g. 0.02 = 2% of the baseline.")
    top_k: int = Field(3, ge=2, description="Also report top-k accuracy.")
    tta: Literal[False, "flips"] = Field(
        False, description="Test-time augmentation in the Evaluator: flips = each eval image's class "
                           "probabilities are the mean of the model's softmax on the image and on its "
                           "horizontal (left-right) mirror; false = one pass. The served model (the "
                           "baseline) is evaluated the same way. Serving is unchanged (serving.tta).")
    calibrate: Literal["none", "temperature"] = Field(
        "none", description="temperature = after training, the Trainer fits one temperature T on half of the "
                            "eval split (chosen by each record's hash) and every exported signature returns "
                            "softmax(log(p) / T); the model card shows the expected calibration error (15 bins) "
                            "before and after on the other half and a reliability diagram "
                            "(components/calibration.py). none = the model's softmax as trained.")

    @model_validator(mode="after")
    def _some_threshold(self):
        if self.min_accuracy is None and self.max_drop is None and self.max_drop_relative is None:
            # TFMA writes no blessing at all without a threshold, so the Pusher would never push.
            raise ValueError("eval needs at least one of min_accuracy, max_drop or max_drop_relative")
        return self


class ModelRegistryConfig(_Strict):
    project: str = Field(description="Google Cloud project of the Model Registry.")
    region: str = Field(description="Vertex AI region, e.g. us-central1.")
    display_name: str = Field(description="The model's display name in the registry.")
    serving_container_image: str = Field(
        description="e.g. us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-16:latest")
    parent_model: Optional[str] = Field(None, description="Register as a new version of this model.")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels on each registered version.")


# push.tflite: no TFLite file, or the file's number format.
TfliteKind = Literal[False, "float32", "float16", "int8"]


class PushConfig(_Strict):
    destination: Optional[str] = Field(None, description="Default: <root>/serving.")
    keep: Optional[int] = Field(None, ge=1, description="Versions to keep (oldest removed); null: all.")
    tflite: TfliteKind = Field(
        False, description="Also export the model as TFLite (model.tflite + labels.txt): float32, float16 "
                           "(weights stored as float16) or int8 (full integer quantization calibrated on train "
                           "images; uint8 pixels in, uint8 probabilities out); true means float32. The Pusher "
                           "runs the file on the eval split and writes its top-1 agreement with the SavedModel "
                           "and its size on the model card (components/tflite_export.py).")
    tflite_min_agreement: float = Field(
        0.98, gt=0.0, le=1.0,
        description="The TFLite file is written only when its top-1 agrees with the SavedModel's on at least "
                    "this fraction of the eval split; below it the version is pushed without it (one line "
                    "says why).")

    @field_validator("tflite", mode="before")
    @classmethod
    def _true_is_float32(cls, v):
        # push.tflite was a bool: true keeps meaning the float32 export it made.
        return "float32" if v is True else v
    vertex_model_registry: Optional[ModelRegistryConfig] = Field(
        None, description="Also register each new version in the Vertex AI Model Registry (gs:// destination).")


class ServingConfig(_Strict):
    """Limits the exported signatures enforce on untrusted requests (recorded beside the
    model in assets.extra/serving.json)."""
    max_pixels: int = Field(
        40_000_000, ge=1,
        description="An image whose header says width x height is above this is refused undecoded "
                    "(a per-image error); decoding one costs about 15 bytes per pixel.")
    max_batch: int = Field(
        256, ge=1, description="Images (or examples) per request; a larger request is refused whole.")
    tta: Literal[False, "flips"] = Field(
        False, description="serving_default averages the softmax over the image and its horizontal "
                           "mirror (2 model passes per image) instead of one pass; needs eval.tta: flips, "
                           "so the blessing judges what is served.")
    abstain_below: Optional[float] = Field(
        None, gt=0.0, lt=1.0,
        description="When an image's top class probability is below this, serving_default and "
                    "serving_examples answer class_name 'unknown' and abstained true (probabilities and "
                    "class_id still give the top classes); the model card tabulates coverage and accuracy "
                    "on the eval split at several values. null: always answer.")


class ResourcesConfig(_Strict):
    cpu: Optional[float] = Field(None, gt=0, description="vCPU limit.")
    memory_gb: Optional[float] = Field(None, gt=0, description="Memory limit in GB.")
    accelerator: Optional[str] = Field(
        None, description="On Vertex AI an accelerator type (e.g. NVIDIA_TESLA_T4, NVIDIA_L4, TPU_V3); on "
                          "Kubeflow a Kubernetes resource name (e.g. nvidia.com/gpu).")
    accelerator_count: int = Field(1, ge=1, description="Accelerators of that type for the step.")


class DataflowConfig(_Strict):
    """The heavy Beam steps on Dataflow, in the project image."""
    project: str = Field(description="Google Cloud project Dataflow runs in.")
    region: str = Field(description="Dataflow region, e.g. us-central1.")
    temp_location: str = Field(description="gs:// folder for Dataflow's temporary files.")
    machine_type: Optional[str] = Field(None, description="Worker machine type (null: Dataflow's default).")
    max_num_workers: Optional[int] = Field(
        None, ge=1, description="Most workers Dataflow may scale to (null: Dataflow's default).")

    def args(self, image: str) -> list[str]:
        a = ["--runner=DataflowRunner", f"--project={self.project}", f"--region={self.region}",
             f"--temp_location={self.temp_location}", f"--sdk_container_image={image}",
             "--experiments=use_runner_v2"]
        if self.machine_type:
            a.append(f"--machine_type={self.machine_type}")
        if self.max_num_workers:
            a.append(f"--max_num_workers={self.max_num_workers}")
        return a


class VertexTrainingConfig(_Strict):
    """Run the Trainer as a Vertex AI custom job (tfx.extensions.google_cloud_ai_platform)."""
    project: str = Field(description="Google Cloud project of the training job.")
    region: str = Field(description="Vertex AI region, e.g. us-central1.")
    machine_type: str = Field("n1-standard-8", description="Machine type of each replica.")
    accelerator_type: Optional[str] = Field(None, description="e.g. NVIDIA_TESLA_T4 (null: no accelerator).")
    accelerator_count: int = Field(1, ge=1, description="Accelerators per replica.")
    workers: int = Field(
        1, ge=1, description="Machines that train together (MultiWorkerMirroredStrategy, TF_CONFIG set by "
                                    "Vertex AI): the chief's worker pool of 1 replica plus a pool of workers - 1, "
                                    "all the same machine, accelerators and image.")

    @model_validator(mode="before")
    @classmethod
    def _replica_count_is_workers(cls, raw):
        # replica_count put N replicas in the first pool, which Vertex keeps for the chief
        # alone (replicaCount 1): refused, naming its replacement, never reinterpreted.
        if isinstance(raw, dict) and "replica_count" in raw:
            raise ValueError(f"replica_count is replaced by workers (the chief's pool has 1 replica, the other "
                             f"workers a pool of their own, as Vertex requires); write "
                             f"workers: {raw['replica_count']} instead")
        return raw


class KubeflowConfig(_Strict):
    image: Optional[str] = Field(None, description="The project's container image every step runs in.")
    resources: dict[str, ResourcesConfig] = Field(
        default_factory=dict, description="Per component (by name, e.g. Trainer): CPU, memory, accelerator.")
    dataflow: Optional[DataflowConfig] = Field(
        None, description="Run ImportExampleGen, StatisticsGen, DataCheck, Transform and Evaluator on Dataflow.")
    vertex_training: Optional[VertexTrainingConfig] = Field(
        None, description="Run the Trainer as a Vertex AI custom job.")


# --- what each step receives ---------------------------------------------------------
# Each step's custom_config is one of these, dumped to JSON by the pipeline and validated
# again inside the step. It is part of TFX's cache key, so it holds only what the step
# uses: changing an eval threshold or an export option must not retrain the model.

class _StepSettings(_Strict):
    # TFX fingerprints a module_file but not step code referenced by import path; this
    # hash of components/*.py makes an edited step re-run instead of coming from cache.
    code_fingerprint: str


class TransformSettings(_StepSettings):
    image_key: str
    label_key: str
    image_size: int = Field(ge=1)


class TrainerSettings(_StepSettings):
    # The Vertex AI Trainer merges its own ai_platform_* keys into custom_config, and
    # run_fn receives them too: ignore what is not ours.
    model_config = ConfigDict(extra="ignore", validate_assignment=True)

    image_key: str
    labels_file: Optional[str]
    num_classes: Optional[int]
    model: ModelConfig
    train: TrainConfig
    serving: ServingConfig = Field(default_factory=lambda: ServingConfig())
    calibrate: Literal["none", "temperature"] = "none"


class PusherSettings(_StepSettings):
    keep: Optional[int]
    tflite: TfliteKind
    tflite_min_agreement: float = 0.98
    vertex_model_registry: Optional[ModelRegistryConfig]
    # For the model card: the thresholds the blessing judged, and the image the steps ran in.
    eval: EvalConfig = Field(default_factory=lambda: EvalConfig())
    image: Optional[str] = None
    # The canary (components/canary.py) reads the eval images from the tf.Examples.
    image_key: str = "image"


class Config(_Strict):
    name: str = Field("xfer", pattern=r"^[a-z0-9][a-z0-9-]*$",
                      description="The pipeline's name: its runs' name in the metadata store and on Kubeflow "
                                  "/ Vertex AI (lowercase letters, digits and hyphens).")
    root: str = Field("runs/xfer", description="Local working folder; other paths default under it.")
    pipeline_root: Optional[str] = Field(
        None, description="Where the steps write their artifacts (local or gs://; a gs:// path on Kubeflow "
                          "and Vertex AI). Default: <root>/pipeline_root.")
    metadata_path: Optional[str] = Field(
        None, description="The local ML Metadata store (SQLite) that xfer runs and xfer show read. "
                          "Default: <root>/metadata.sqlite.")
    enable_cache: bool = Field(
        True, description="Take a step from cache when its inputs, settings and code are unchanged; "
                          "false runs every step.")
    beam_pipeline_args: list[str] = Field(
        default_factory=lambda: ["--direct_running_mode=in_memory"],
        description="Arguments for the Beam steps (ImportExampleGen, StatisticsGen, DataCheck, Transform, "
                    "Evaluator). Unless they name a runner (or kubeflow.dataflow is set), the steps get "
                    "Beam's in-process runner with this running mode; in_memory (one process a step) is "
                    "the fastest at laptop scale.")
    data: DataConfig = Field(description="Where the examples come from, and how they are checked.")
    model: ModelConfig = Field(
        default_factory=ModelConfig, description="The network: the backbone, its weights, the input size "
                                                 "and the new head.")
    train: TrainConfig = Field(
        default_factory=TrainConfig, description="The Trainer: phase 1 (transfer), phase 2 (fine-tune), "
                                                 "augmentation, devices.")
    eval: EvalConfig = Field(
        default_factory=EvalConfig, description="The blessing: the Evaluator's thresholds a new model must "
                                                "pass to be pushed. At least one must be set.")
    push: PushConfig = Field(default_factory=PushConfig,
                             description="Where blessed models go, as numbered versions.")
    serving: ServingConfig = Field(default_factory=ServingConfig)
    kubeflow: KubeflowConfig = Field(
        default_factory=KubeflowConfig, description="Kubeflow Pipelines and Vertex AI (xfer compile, submit "
                                                    "and schedule): the image, resources per step, "
                                                    "Dataflow, Vertex AI training.")

    @model_validator(mode="after")
    def _served_tta_is_evaluated(self):
        if self.serving.tta and not self.eval.tta:
            raise ValueError(
                f"serving.tta is '{self.serving.tta}' but eval.tta is false: the blessing would judge "
                f"one-pass predictions while serving_default averages flips; set eval.tta: "
                f"{self.serving.tta} too, or serving.tta: false")
        return self

    @model_validator(mode="after")
    def _fill_paths(self):
        base = self.root.rstrip("/")
        if self.pipeline_root is None:
            self.pipeline_root = f"{base}/pipeline_root"
        if self.metadata_path is None:
            self.metadata_path = f"{base}/metadata.sqlite"
        if self.push.destination is None:
            self.push.destination = f"{base}/serving"
        if self.data.builtin and self.data.labels_file is None:
            self.data.labels_file = f"{self.data_dir}/labels.txt"
        return self

    @property
    def data_dir(self) -> str:
        """Where the TFRecords are: input_base, or the embedded dataset's folder."""
        if self.data.builtin:
            return f"{self.root.rstrip('/')}/data/{self.data.builtin}"
        return self.data.input_base

    def transform_settings(self, code_fingerprint: str) -> TransformSettings:
        return TransformSettings(code_fingerprint=code_fingerprint, image_key=self.data.image_key,
                                 label_key=self.data.label_key, image_size=self.model.image_size)

    def trainer_settings(self, code_fingerprint: str) -> TrainerSettings:
        return TrainerSettings(code_fingerprint=code_fingerprint, image_key=self.data.image_key,
                               labels_file=self.data.labels_file, num_classes=self.data.num_classes,
                               model=self.model.model_copy(deep=True), train=self.train.model_copy(deep=True),
                               serving=self.serving.model_copy(deep=True), calibrate=self.eval.calibrate)

    def pusher_settings(self, code_fingerprint: str) -> PusherSettings:
        registry = self.push.vertex_model_registry
        return PusherSettings(code_fingerprint=code_fingerprint, keep=self.push.keep, tflite=self.push.tflite,
                              tflite_min_agreement=self.push.tflite_min_agreement,
                              vertex_model_registry=registry.model_copy(deep=True) if registry else None,
                              eval=self.eval.model_copy(deep=True), image=self.kubeflow.image,
                              image_key=self.data.image_key)
