#!/usr/bin/python3
"""Writes the torch.save fixtures of tests/unit/torch_checkpoint_test.cc.

Run with Debian's python3-torch:  /usr/bin/python3 tests/data/torch/make_fixtures.py
Every <name>.pt is written by the real torch.save (or, for the malformed ones, by zipfile
with a hand-built pickle); next to it <name>.json holds what PyTorch itself says the file
contains, so the C++ reader is checked against PyTorch and not against itself.
"""
import enum
import io
import json
import os
import pickle
import sys
import types
import zipfile
from collections import OrderedDict

import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))


def tensor_entry(name, t):
    """What the C++ side must produce: contiguous fp32 values in row-major order."""
    return {
        "name": name,
        "dtype": str(t.dtype).replace("torch.", ""),
        "shape": list(t.shape),
        "contiguous": t.is_contiguous(),
        "values": [float(v) for v in t.detach().float().contiguous().flatten().tolist()],
    }


def write_json(name, obj):
    with open(os.path.join(HERE, name + ".json"), "w") as f:
        json.dump(obj, f, separators=(",", ":"))
        f.write("\n")


def save(obj, name, **kwargs):
    torch.save(obj, os.path.join(HERE, name + ".pt"), **kwargs)


# --- 1. state_dict() of a real module (protocol 2, the torch.save default) ----------------
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.item_embedding = nn.Embedding(5, 4, padding_idx=0)
        self.attention = nn.MultiheadAttention(4, 2, batch_first=True)
        self.conv = nn.Conv1d(4, 2, kernel_size=1)
        self.norm = nn.LayerNorm(4)


def make_module_state_dict():
    torch.manual_seed(0)
    sd = Net().state_dict()
    save(sd, "module_state_dict")
    write_json("module_state_dict", {"tensors": [tensor_entry(k, v) for k, v in sd.items()]})


# --- 2. dtypes, views, shared storages ---------------------------------------------------
def make_dtypes():
    torch.manual_seed(1)
    weight = torch.randn(3, 4)
    grid = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    sd = OrderedDict()
    sd["f32"] = torch.randn(2, 3)
    sd["f64"] = torch.randn(2, 3, dtype=torch.float64)
    sd["f16"] = torch.randn(5).half()
    sd["bf16"] = torch.randn(2, 2).bfloat16()
    sd["i64"] = torch.tensor([[-3, 0], [7, 1 << 40]], dtype=torch.int64)
    sd["i32"] = torch.tensor([-2147483648, 5, 2147483647], dtype=torch.int32)
    sd["i16"] = torch.tensor([-32768, 12, 32767], dtype=torch.int16)
    sd["i8"] = torch.tensor([-128, -1, 127], dtype=torch.int8)
    sd["u8"] = torch.tensor([0, 200, 255], dtype=torch.uint8)
    sd["bool"] = torch.tensor([True, False, True])
    sd["weight"] = weight
    sd["weight_tied"] = weight                  # same tensor twice: one storage, memoised
    sd["weight_t"] = weight.t()                 # a transposed view of the same storage
    sd["grid_slice"] = grid[1:, ::2]            # storage offset 6, strides (6, 2)
    sd["grid_col"] = grid[:, 5]                 # offset 5, stride (6,)
    sd["scalar"] = torch.tensor(3.5)
    sd["empty"] = torch.zeros(0, 3)
    save(sd, "dtypes")
    write_json("dtypes", {"tensors": [tensor_entry(k, v) for k, v in sd.items()],
                          "shared_storage": [["weight", "weight_tied", "weight_t"]]})


# --- 3. RecBole's checkpoint layout, protocol 4 -----------------------------------------
# RecBole's own classes, registered under RecBole's module names so the pickle names the
# same globals a real RecBole checkpoint does (the reader must keep them as opaque objects).
def fake_module(name):
    parts = name.split(".")
    for i in range(1, len(parts) + 1):     # import needs every parent package too
        sys.modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    return sys.modules[name]


configurator = fake_module("recbole.config.configurator")
enum_type = fake_module("recbole.utils.enum_type")


class Config:
    def __init__(self):
        self.final_config_dict = {}


class ModelType(enum.Enum):
    GENERAL = 1
    SEQUENTIAL = 2


Config.__module__ = configurator.__name__
Config.__qualname__ = "Config"
configurator.Config = Config
ModelType.__module__ = enum_type.__name__
ModelType.__qualname__ = "ModelType"
enum_type.ModelType = ModelType


class SASRecLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.item_embedding = nn.Embedding(6, 4, padding_idx=0)
        self.position_embedding = nn.Embedding(3, 4)
        self.LayerNorm = nn.LayerNorm(4)
        self.dense = nn.Linear(4, 4)


def make_recbole_checkpoint():
    torch.manual_seed(2)
    model = SASRecLike()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
    loss = model.dense(model.LayerNorm(model.item_embedding(torch.tensor([1, 2])))).sum()
    loss.backward()
    optimizer.step()

    shared_metrics = ["Recall", "NDCG"]          # referenced twice: memo sharing
    config = Config()
    config.model = "SASRec"
    config.dataset = "ml-100k"
    config.final_config_dict = {
        "model": "SASRec",
        "MAX_ITEM_LIST_LENGTH": 3,
        "hidden_size": 4,
        "n_layers": 1,
        "hidden_dropout_prob": 0.5,
        "layer_norm_eps": 1e-12,
        "loss_type": "CE",
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "device": torch.device("cpu"),
        "MODEL_TYPE": ModelType.SEQUENTIAL,
        "metrics": shared_metrics,
        "valid_metric_names": shared_metrics,
        "topk": [10, 20],
        "eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}, "order": "TO", "mode": "full"},
        "repeatable": True,
        "reproducibility": False,
        "seed": 2020,
        "big": 1 << 70,
        "negative": -123456789012,
        "checkpoint_dir": "saved",
        "load_col": {"inter": ("user_id", "item_id", "rating", "timestamp")},
        "unused_fields": frozenset(["a"]),
        "data_bytes": b"\x00\xffab",
        "nothing": None,
    }
    checkpoint = {
        "config": config,
        "epoch": 3,
        "cur_step": 1,
        "best_valid_score": 0.5,
        "state_dict": model.state_dict(),
        "other_parameter": None,
        "optimizer": optimizer.state_dict(),
    }
    save(checkpoint, "recbole_checkpoint", pickle_protocol=4)

    opt_state = optimizer.state_dict()
    write_json("recbole_checkpoint", {
        "tensors": [tensor_entry(k, v) for k, v in model.state_dict().items()],
        "epoch": 3, "cur_step": 1, "best_valid_score": 0.5,
        "config": {k: v for k, v in config.final_config_dict.items()
                   if isinstance(v, (str, int, float)) and not isinstance(v, bool)
                   and (isinstance(v, str) or abs(v) < (1 << 63))},
        "optimizer": {
            "lr": opt_state["param_groups"][0]["lr"],
            "betas": list(opt_state["param_groups"][0]["betas"]),
            "params": opt_state["param_groups"][0]["params"],
            "state0": [tensor_entry(k, v) for k, v in opt_state["state"][0].items()],
        },
    })


# --- 4. the legacy (pre-1.6, non-zip) format ---------------------------------------------
def make_legacy():
    save({"w": torch.ones(2)}, "legacy", _use_new_zipfile_serialization=False)


# --- 5. malformed files: a real torch zip layout, hand-built pickles ---------------------
class StorageRef:
    """Stands for a storage in a hand-built pickle; becomes a persistent id."""

    def __init__(self, key, numel, storage_type="FloatStorage"):
        self.key, self.numel, self.storage_type = key, numel, storage_type


class TensorRef:
    """Pickles as torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)."""

    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, tuple(size), tuple(stride), False, OrderedDict())

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, self.args)


class HandPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, StorageRef):
            return ("storage", getattr(torch, obj.storage_type), obj.key, "cpu", obj.numel)
        return None


def writestr(z, name, data):
    # A fixed timestamp keeps the fixtures byte-identical from run to run.
    z.writestr(zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0)), data, compress_type=z.compression)


def write_torch_zip(name, root, storages, raw_pickle=None):
    """storages: {key: bytes}. Uses zipfile (no ZIP64 records: also covers that path)."""
    buffer = io.BytesIO()
    HandPickler(buffer, protocol=2).dump(root)
    data_pkl = raw_pickle if raw_pickle is not None else buffer.getvalue()
    with zipfile.ZipFile(os.path.join(HERE, name + ".pt"), "w", zipfile.ZIP_STORED) as z:
        writestr(z, name + "/data.pkl", data_pkl)
        for key, data in storages.items():
            writestr(z, name + "/data/" + key, data)
        writestr(z, name + "/version", "3\n")


def make_malformed():
    four_floats = torch.arange(4, dtype=torch.float32).numpy().tobytes()
    # A well-formed hand-built file, so the malformed ones differ from it in one thing only.
    write_torch_zip("handmade_ok", OrderedDict(w=TensorRef(StorageRef("0", 4), 1, [3], [1])),
                    {"0": four_floats})
    write_json("handmade_ok", {"tensors": [{"name": "w", "shape": [3], "values": [1.0, 2.0, 3.0]}]})
    write_torch_zip("missing_storage", OrderedDict(w=TensorRef(StorageRef("7", 4), 0, [4], [1])),
                    {"0": four_floats})
    write_torch_zip("tensor_out_of_storage",
                    OrderedDict(w=TensorRef(StorageRef("0", 4), 2, [3], [1])), {"0": four_floats})
    write_torch_zip("stride_out_of_storage",
                    OrderedDict(w=TensorRef(StorageRef("0", 4), 0, [2, 2], [3, 1])),
                    {"0": four_floats})
    write_torch_zip("storage_entry_short",
                    OrderedDict(w=TensorRef(StorageRef("0", 8), 0, [8], [1])), {"0": four_floats})
    # A torch file re-zipped with compression: the reader supports stored entries only.
    with zipfile.ZipFile(os.path.join(HERE, "handmade_ok.pt")) as src, \
            zipfile.ZipFile(os.path.join(HERE, "deflated.pt"), "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            writestr(dst, info.filename.replace("handmade_ok", "deflated"), src.read(info))
    # PROTO 2, EMPTY_DICT, then opcode 0xff, which no pickle protocol defines.
    write_torch_zip("unknown_opcode", None, {"0": four_floats}, raw_pickle=b"\x80\x02}\xff.")


def main():
    make_module_state_dict()
    make_dtypes()
    make_recbole_checkpoint()
    make_legacy()
    make_malformed()
    total = sum(os.path.getsize(os.path.join(HERE, f)) for f in os.listdir(HERE))
    print(f"fixtures written to {HERE}: {total} bytes")


if __name__ == "__main__":
    main()
