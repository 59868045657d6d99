"""A JSON predict request turned into input tensors by the rules of TF Serving's REST
layer (tensorflow/serving, tensorflow_serving/util/json_tensor.cc,
FillPredictRequestFromJson), so a test can send the exact JSON docs/serving.md documents
to a SavedModel's signature. Vertex AI's prebuilt TensorFlow containers and KServe's
TensorFlow runtime run TF Serving, so its rules are theirs. Written from those rules, not
copied; it is no looser than they are: what TF Serving refuses, this refuses (RestError).

The rules:
- The body is a JSON object; "signature_name", when present, is a string; exactly one of
  "instances" (row format) or "inputs" (columnar format).
- A JSON value becomes a tensor whose shape follows the first element at each level of
  nesting (GetDenseTensorShape); every list at a level must have that size, and scalars sit
  exactly at the deepest level (FillTensorProto).
- {"b64": "<base64>"} (an object with that one key, a string value) is decoded to bytes,
  and only for a DT_STRING tensor (FillTensorProto: for any other dtype an object is a type
  error). The input's name plays no part in decoding: the "_bytes" suffix in json_tensor.cc
  (kBytesTensorNameSuffix) is used only when writing responses (an output so named is
  base64-encoded), not when reading requests.
- "instances": a non-empty list. Either every element is an object keyed by input names
  (not a b64 object), whose keys equal the signature's input names exactly, or, when the
  signature has one input, every element is that input's value (a b64 object counts as a
  value). Each element's tensor must have the same shape; the instances are stacked along
  a new first dimension.
- After conversion the request must hold every input of the signature, no more (TF
  Serving's Predict checks this before running the model).
- "inputs": one value (a list or a b64 object) when the signature has one input, else an
  object that names every input (missing ones are an error; others are not read).
"""
from __future__ import annotations

import base64
import binascii
import json
import math

import numpy as np


class RestError(ValueError):
    """A request TF Serving's REST layer refuses (HTTP 400 there)."""


STRING, FLOAT, DOUBLE, INT32, INT64, BOOL = "string", "float32", "float64", "int32", "int64", "bool"


def _is_b64(v) -> bool:
    return isinstance(v, dict) and len(v) == 1 and isinstance(v.get("b64"), str)


def _is_element_object(v) -> bool:
    return isinstance(v, dict) and not _is_b64(v)


def _shape(v) -> list[int]:
    """The shape read off the first element at each level (GetDenseTensorShape)."""
    shape = []
    while isinstance(v, list):
        shape.append(len(v))
        if not v:
            break
        v = v[0]
    return shape


def _scalar(v, dtype: str):
    if isinstance(v, dict):
        if dtype != STRING:
            raise RestError(f"JSON Value: {json.dumps(v)} Type: Object is not of expected type: {dtype}")
        if not _is_b64(v):
            raise RestError(f"JSON Value: {json.dumps(v)} not formatted correctly for base64 data")
        try:
            return base64.b64decode(v["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise RestError("Unable to base64 decode") from None
    ok = {STRING: isinstance(v, str),
          FLOAT: isinstance(v, (int, float)) and not isinstance(v, bool),
          DOUBLE: isinstance(v, (int, float)) and not isinstance(v, bool),
          INT32: isinstance(v, int) and not isinstance(v, bool) and -2**31 <= v < 2**31,
          INT64: isinstance(v, int) and not isinstance(v, bool) and -2**63 <= v < 2**63,
          BOOL: isinstance(v, bool)}
    if dtype not in ok:
        raise RestError(f"Conversion of JSON Value: {json.dumps(v)} to type: {dtype} is not implemented")
    if not ok[dtype]:
        raise RestError(f"JSON Value: {json.dumps(v)} is not of expected type: {dtype}")
    if dtype == FLOAT and math.isfinite(v) and abs(v) > np.finfo(np.float32).max:
        raise RestError(f"Cannot convert JSON value: {v} to float without loss of precision.")
    return v.encode("utf-8") if dtype == STRING else v


def _fill(v, level: int, shape: list[int], dtype: str, out: list) -> None:
    """FillTensorProto: values in row-major order into `out`."""
    if not isinstance(v, list):
        if level != len(shape):
            raise RestError(f"JSON Value: {json.dumps(v)} found at incorrect level: {level + 1} in the JSON DOM. "
                            f"Expected at level: {len(shape)}")
        out.append(_scalar(v, dtype))
        return
    if level >= len(shape):
        raise RestError(f"Encountered list at unexpected level: {level} expected < {len(shape)}")
    if len(v) != shape[level]:
        raise RestError(f"Encountered list at unexpected size: {len(v)} at level: {level} expected size: {shape[level]}")
    for item in v:
        _fill(item, level + 1, shape, dtype, out)


def _tensor(v, dtype: str) -> tuple[list, list[int]]:
    shape, values = _shape(v), []
    _fill(v, 0, shape, dtype, values)
    return values, shape


def _array(values: list, shape: list[int], dtype: str) -> np.ndarray:
    if dtype == STRING:
        a = np.empty(len(values), dtype=object)
        a[:] = values
        return a.reshape(shape)
    return np.array(values, dtype=dtype).reshape(shape)


def to_inputs(body: str, inputs: dict[str, str]) -> tuple[str, dict[str, np.ndarray], str]:
    """(signature_name, {input: array}, "row" | "columnar") from a predict request body,
    for a signature whose inputs are {name: dtype} (dtypes as in STRING, FLOAT, ...)."""
    if not body:
        raise RestError("JSON Parse error: The document is empty")
    try:
        doc = json.loads(body)
    except ValueError as e:
        raise RestError(f"JSON Parse error: {e}") from None
    if not isinstance(doc, dict):
        raise RestError(f"JSON Value: {body[:80]} Is not object")
    signature = doc.get("signature_name", "")
    if not isinstance(signature, str):
        raise RestError("'signature_name' key must be a string value.")
    if not inputs:
        raise RestError(f"Failed to get input map for signature: {signature or 'DEFAULT'}")
    if "instances" in doc and "inputs" in doc:
        raise RestError("Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist")
    if "instances" in doc:
        tensors, form = _rows(doc["instances"], inputs), "row"
    elif "inputs" in doc:
        tensors, form = _columns(doc["inputs"], inputs), "columnar"
    else:
        raise RestError("Missing 'inputs' or 'instances' key")
    # json_tensor.cc lets bare instances through for a signature of several inputs (a b64
    # object is an object to its first check); the request then lacks inputs, which TF
    # Serving's Predict refuses before running the model (predict_util.cc: the request's
    # input keys must equal the signature's).
    if set(tensors) != set(inputs):
        raise RestError(f"input size does not match signature: {len(tensors)}!={len(inputs)}; missing "
                        f"{','.join(sorted(set(inputs) - set(tensors)))}")
    return signature, tensors, form


def _rows(instances, inputs: dict[str, str]) -> dict[str, np.ndarray]:
    if not isinstance(instances, list):
        raise RestError("Excepting 'instances' to be an list/array")
    if not instances:
        raise RestError("No values in 'instances' array")
    if not isinstance(instances[0], dict) and len(inputs) > 1:
        raise RestError("instances is a plain list, but expecting list of objects as multiple input tensors "
                        "required as per tensorinfo_map")
    objects = _is_element_object(instances[0])
    values: dict[str, list] = {}
    shapes: dict[str, list[int]] = {}

    def add(item, name: str, index: int) -> None:
        if name not in inputs:
            raise RestError(f"Failed to process element: {index} key: {name} of 'instances' list. Error: JSON "
                            f"object: does not have named input: {name}")
        got, shape = _tensor(item, inputs[name])
        if name in shapes and (len(got) != math.prod(shapes[name]) or shape != shapes[name]):
            raise RestError(f"Failed to process element: {index} of 'instances' list. Error: Expecting shape "
                            f"{shapes[name]} but got: {shape}")
        shapes.setdefault(name, shape)
        values.setdefault(name, []).extend(got)

    for index, element in enumerate(instances):
        if objects:
            if not _is_element_object(element):
                raise RestError(f"Expecting object but got list at item {index} of input list")
            for name, item in element.items():
                add(item, name, index)
            if set(element) != set(inputs):
                raise RestError(f"Failed to process element: {index} of 'instances' list. JSON object: keys must be "
                                f"equal to: {','.join(sorted(inputs))}")
        else:
            if _is_element_object(element):
                raise RestError(f"Expecting value/list but got object at item {index} of input list")
            add(element, next(iter(inputs)), index)
    return {name: _array(values[name], [len(instances), *shapes[name]], inputs[name]) for name in values}


def _columns(value, inputs: dict[str, str]) -> dict[str, np.ndarray]:
    if not isinstance(value, dict) or _is_b64(value):
        if len(inputs) > 1:
            raise RestError("inputs is a plain value/list, but expecting an object as multiple input tensors "
                            "required as per tensorinfo_map")
        name, dtype = next(iter(inputs.items()))
        got, shape = _tensor(value, dtype)
        return {name: _array(got, shape, dtype)}
    out = {}
    for name, dtype in inputs.items():
        if name not in value:
            raise RestError(f"Missing named input: {name} in 'inputs' object.")
        got, shape = _tensor(value[name], dtype)
        out[name] = _array(got, shape, dtype)
    return out


def signature_inputs(fn) -> dict[str, str]:
    """{input name: dtype} of a loaded signature (a ConcreteFunction), as TF Serving reads
    them from the SignatureDef."""
    _, kwargs = fn.structured_input_signature
    return {name: spec.dtype.name for name, spec in kwargs.items()}
