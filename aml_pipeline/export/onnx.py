"""LightGBM trees as an ONNX graph in double precision, run by ONNX Runtime.

Why not onnxmltools' ``convert_lightgbm``: it accepts float32 input only and stores the
split thresholds as float32, so a feature value that rounds to the same float as a
threshold goes the other way, and scores differ from LightGBM's by up to ~3e-5 (measured
on the quickstart bundle, docs/lifecycle.md). The older ``TreeEnsembleRegressor`` takes
double thresholds (``*_as_tensor``) but always returns float32 sums (1e-8 off). Here the
trees become one ``ai.onnx.ml.TreeEnsemble`` (opset 5), whose thresholds, leaf values and
output are float64, followed by LightGBM's sigmoid: the exported scores equal the native
ones to ~4e-16.

LightGBM's missing-value rules map onto ONNX's per-node ``missing_value_tracks_true``:
``missing_type=NaN`` sends NaN the default way; ``None`` treats NaN as 0, i.e. the way
``0 <= threshold`` goes; ``Zero`` (``zero_as_missing``) also sends an exact 0 the default
way, which one ONNX node can only express when that is the way 0 goes anyway, so other
such splits are refused, as are categorical splits and multi-class models.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aml_pipeline.export.base import ExportError

INPUT, OUTPUT = "features", "score"


def _sigmoid_scale(dump: dict) -> float:
    objective = str(dump.get("objective", ""))
    if not objective.startswith(("binary", "cross_entropy")) or dump.get("num_tree_per_iteration", 1) != 1:
        raise ExportError(f"export.format=onnx: only binary LightGBM models are exported (objective {objective!r})")
    for part in objective.split():
        if part.startswith("sigmoid:"):
            return float(part.split(":", 1)[1])
    return 1.0


def _nan_goes_left(n: dict) -> bool:
    t, default_left, missing = float(n["threshold"]), bool(n["default_left"]), n["missing_type"]
    if missing == "NaN":
        return default_left
    if missing == "None":
        return 0.0 <= t
    if default_left != (0.0 <= t):  # Zero: NaN and 0 both go the default way
        raise ExportError("export.format=onnx: a zero_as_missing split sends 0 against its threshold; not "
                          "expressible as one ONNX node (train without zero_as_missing)")
    return default_left


def tree_arrays(dump: dict) -> dict[str, list]:
    """The ``TreeEnsemble`` (ai.onnx.ml opset 5) attributes of LightGBM's ``dump_model()``."""
    a: dict[str, list] = {k: [] for k in ("roots", "feature", "split", "true_leaf", "true_id", "false_leaf",
                                          "false_id", "missing", "leaf")}

    def node(feature: int, split: float, missing: bool) -> int:
        i = len(a["feature"])
        a["feature"].append(feature); a["split"].append(split); a["missing"].append(int(missing))  # noqa: E702
        for k in ("true_leaf", "true_id", "false_leaf", "false_id"):
            a[k].append(0)
        return i

    def visit(n: dict) -> tuple[int, int]:  # (is a leaf, index in the leaf or node arrays)
        if "leaf_value" in n:
            a["leaf"].append(float(n["leaf_value"]))
            return 1, len(a["leaf"]) - 1
        if n["decision_type"] != "<=":
            raise ExportError(f"export.format=onnx: categorical splits are not exported (decision_type {n['decision_type']!r})")
        i = node(int(n["split_feature"]), float(n["threshold"]), _nan_goes_left(n))
        a["true_leaf"][i], a["true_id"][i] = visit(n["left_child"])
        a["false_leaf"][i], a["false_id"][i] = visit(n["right_child"])
        return 0, i

    for info in dump["tree_info"]:
        leaf, idx = visit(info["tree_structure"])
        if leaf:  # a one-leaf tree: a root whose both ways lead to that leaf
            root = node(0, 0.0, True)
            a["true_leaf"][root] = a["false_leaf"][root] = 1
            a["true_id"][root] = a["false_id"][root] = idx
            idx = root
        a["roots"].append(idx)
    return a


def convert(booster: Any, n_features: int):
    """An ONNX ModelProto: float64 [N, n_features] in, float64 [N] probability out."""
    import onnx  # the export extra (runtimes.require checks it first)
    from onnx import TensorProto, helper, numpy_helper

    dump = booster.dump_model()
    scale = _sigmoid_scale(dump)
    a = tree_arrays(dump)
    ensemble = helper.make_node(
        "TreeEnsemble", [INPUT], ["raw"], domain="ai.onnx.ml", aggregate_function=1, post_transform=0, n_targets=1,
        tree_roots=a["roots"], nodes_featureids=a["feature"],
        nodes_modes=numpy_helper.from_array(np.zeros(len(a["feature"]), dtype=np.uint8)),  # 0 = BRANCH_LEQ
        nodes_splits=numpy_helper.from_array(np.asarray(a["split"], dtype=np.float64)),
        nodes_trueleafs=a["true_leaf"], nodes_truenodeids=a["true_id"], nodes_falseleafs=a["false_leaf"],
        nodes_falsenodeids=a["false_id"], nodes_missing_value_tracks_true=a["missing"],
        leaf_targetids=[0] * len(a["leaf"]), leaf_weights=numpy_helper.from_array(np.asarray(a["leaf"], dtype=np.float64)))
    nodes = [ensemble]
    logit = "raw"
    if scale != 1.0:
        nodes.append(helper.make_node("Mul", ["raw", "scale"], ["scaled"]))
        logit = "scaled"
    nodes += [helper.make_node("Sigmoid", [logit], ["prob"]), helper.make_node("Reshape", ["prob", "flat"], [OUTPUT])]
    graph = helper.make_graph(
        nodes, "aml_pipeline_lightgbm",
        [helper.make_tensor_value_info(INPUT, TensorProto.DOUBLE, [None, n_features])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.DOUBLE, [None])],
        initializer=[numpy_helper.from_array(np.array([scale], dtype=np.float64), "scale"),
                     numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("ai.onnx.ml", 5)],
                              producer_name="aml_pipeline")
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model


class OnnxScorer:
    """Scores float64 feature matrices with an exported ``model.onnx`` (one session)."""

    def __init__(self, path: str, threads: int = 1):
        import onnxruntime as ort  # the export extra (runtimes.require checks it first)

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(int(threads), 1)
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self._session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self._session.run([OUTPUT], {INPUT: np.ascontiguousarray(X, dtype=np.float64)})[0]

    def predict_one(self, x: np.ndarray) -> float:
        return float(self._session.run([OUTPUT], {INPUT: np.ascontiguousarray(x, dtype=np.float64).reshape(1, -1)})[0][0])
