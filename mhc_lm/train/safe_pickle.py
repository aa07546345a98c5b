"""Read-only inspection of the pickles inside a checkpoint: nothing in a run directory is unpickled
unless every global it would import is a known data type.

A pickle runs code through the callables it imports (`GLOBAL` / `STACK_GLOBAL`) and calls
(`REDUCE`, `NEWOBJ`, `BUILD`). `scan_file` walks the opcodes with `pickletools.genops`, which
decodes the stream without executing any of it, and refuses a file that names anything outside
`SAFE_GLOBALS`: tensor and storage rebuilders, containers, numpy arrays (RNG states), DeepSpeed's
enums and loss scalers, and torch.distributed.checkpoint metadata records. Those are the only
globals the files that Accelerate, DeepSpeed and FSDP write contain, so a checkpoint they wrote
passes and a crafted one (`__reduce__` returning `os.system`) is refused before any library
(DeepSpeed's reader unpickles its files without restriction) opens it.

Torch files are zip archives whose `*/data.pkl` member holds the pickle (tensor bytes live in
other members); a file that starts with a pickle protocol opcode (PROTO 2-5) is scanned as raw
pickles, unless it is a safetensors file (an 8-byte header length, then its JSON header).
"""

from __future__ import annotations

import io
import pickletools
import zipfile
from pathlib import Path

SAFE_GLOBALS = frozenset({
    # containers and scalars
    "collections.OrderedDict", "collections.defaultdict", "builtins.set", "builtins.frozenset", "builtins.slice",
    "builtins.complex", "builtins.bytearray", "builtins.dict", "builtins.list", "builtins.tuple", "builtins.int",
    "builtins.float", "builtins.bool", "builtins.str", "builtins.object", "copyreg._reconstructor",
    "_codecs.encode",  # numpy's RNG state bytes under protocol 2
    "pathlib.PosixPath", "pathlib.PurePosixPath", "pathlib.Path",  # DCP metadata records file paths
    # torch tensors, storages, dtypes, sizes
    "torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor_v3",
    "torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state",
    "torch._utils._rebuild_device_tensor_from_numpy", "torch._utils._rebuild_meta_tensor_no_storage",
    "torch._tensor._rebuild_from_type_v2", "torch.Size", "torch.device", "torch.storage.UntypedStorage",
    "torch.nn.parameter.Parameter", "torch.Tensor", "torch.serialization._get_layout",
    *(f"torch.{n}Storage" for n in ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte",
                                    "Bool", "ComplexFloat", "ComplexDouble", "Untyped")),
    *(f"torch.{n}" for n in ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8",
                             "bool", "complex64", "complex128", "float8_e4m3fn", "float8_e5m2", "strided")),
    # numpy arrays (RNG states)
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype",
    "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.dtypes.UInt32DType",
    "numpy.dtypes.Float64DType", "numpy.dtypes.Int64DType",
    # DeepSpeed state records (enums and plain attribute objects)
    "deepspeed.runtime.zero.config.ZeroStageEnum", "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler", "deepspeed.utils.tensor_fragment.fragment_address",
    "deepspeed.runtime.zero.offload_config.OffloadDeviceEnum",
    # torch.distributed.checkpoint (FSDP sharded state) metadata records
    *(f"torch.distributed.checkpoint.metadata.{n}" for n in (
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata", "TensorProperties",
        "MetadataIndex", "StorageMeta")),
    "torch.distributed.checkpoint.filesystem._StorageInfo", "torch.distributed.checkpoint.planner.LoadItemType",
    "torch.distributed.checkpoint.planner.WriteItemType", "torch.distributed.checkpoint.metadata._MEM_FORMAT_ENCODING",
    "torch.distributed.checkpoint._nested_dict.FLATTEN_MAPPING", "torch.memory_format", "torch.contiguous_format",
    "torch.preserve_format", "torch.channels_last", "torch.channels_last_3d",
})

_PICKLE_PROTOCOL_OPCODE = 0x80
_MAX_RAW_PICKLES = 8  # a legacy torch file holds 5 pickles, then raw tensor bytes


class UnsafePickleError(ValueError):
    """A file would import something other than data types when unpickled."""


def _globals_in(stream: io.BytesIO) -> list[str]:
    """Every `module.name` the pickle at the position of `stream` imports, from its opcodes alone
    (nothing is executed); `stream` is left after its STOP opcode.

    `STACK_GLOBAL` takes module and name from the stack: they are the two values pushed last,
    strings or memo lookups of strings (the memo is followed). Anything else there is reported as
    unknown, and so refused."""
    found: list[str] = []
    pushed: list = []  # recent pushes: a str, or None for any other value
    memo: dict[int, object] = {}
    for op, arg, _ in pickletools.genops(stream):
        name = op.name
        if name.startswith("EXT"):  # a global looked up in copyreg's extension registry
            found.append(f"<extension code {arg}>")
            pushed.append(None)
        elif name in ("GLOBAL", "INST"):
            found.append(str(arg).replace(" ", "."))
            pushed.append(None)
        elif name == "STACK_GLOBAL":
            mod, attr = (pushed[-2], pushed[-1]) if len(pushed) >= 2 else (None, None)
            found.append(f"{mod}.{attr}" if isinstance(mod, str) and isinstance(attr, str) else "<unknown global>")
            pushed.append(None)
        elif name in _STRING_OPS:
            pushed.append(arg if isinstance(arg, str) else arg.decode("utf-8", "replace"))
        elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[int(arg)] = pushed[-1] if pushed else None
        elif name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            pushed.append(memo.get(int(arg)))
        elif name not in ("PROTO", "FRAME"):
            pushed.append(None)
        del pushed[:-4]
    return found


_STRING_OPS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8", "SHORT_BINSTRING",
                         "BINSTRING", "STRING"})


def _pickles_of(path: Path) -> list[tuple[str, bytes]]:
    """(where, bytes) of each pickle inside `path`; [] for a file that holds none."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as zf:
                return [(name, zf.read(name)) for name in zf.namelist()
                        if name.endswith(".pkl") or name.rsplit("/", 1)[-1] == "data.pkl"]
        except zipfile.BadZipFile as err:
            raise UnsafePickleError(f"{path} is not a readable zip archive ({err})") from err
    if _is_safetensors(head):  # 8-byte header length, then the JSON header: never unpickled
        return []
    if head[:1] == bytes([_PICKLE_PROTOCOL_OPCODE]) and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return [("", path.read_bytes())]
    return []


def _is_safetensors(head: bytes) -> bool:
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 0


def scan_file(path: Path) -> None:
    """Raise UnsafePickleError if any pickle in `path` imports a global outside SAFE_GLOBALS."""
    path = Path(path)
    for where, data in _pickles_of(path):
        pos, count = 0, 0
        while pos < len(data) and count < _MAX_RAW_PICKLES:
            buf = io.BytesIO(data[pos:])
            try:
                names = _globals_in(buf)
            except Exception as err:  # truncated or not a pickle: nothing past it can be vouched for
                if count == 0:
                    raise UnsafePickleError(f"{path}{':' + where if where else ''} is not a readable pickle "
                                            f"({type(err).__name__}: {err})") from err
                break
            bad = sorted({n for n in names if n not in SAFE_GLOBALS})
            if bad:
                raise UnsafePickleError(f"{path}{':' + where if where else ''} would import {', '.join(bad[:3])} "
                                        "when unpickled (only tensors and plain data are allowed)")
            pos += buf.tell()
            count += 1
            if where:  # a zip member holds exactly one pickle
                break


def scan_tree(folder: Path) -> int:
    """scan_file for every file under `folder`; returns how many files were scanned."""
    n = 0
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file() and not path.is_symlink():
            scan_file(path)
            n += 1
    return n


def _deepspeed_globals() -> list:
    """The DeepSpeed records of SAFE_GLOBALS as classes, for torch's weights_only unpickler."""
    import importlib

    found = []
    for dotted in sorted(SAFE_GLOBALS):
        if dotted.startswith("deepspeed."):
            module, _, name = dotted.rpartition(".")
            try:
                found.append(getattr(importlib.import_module(module), name))
            except (ImportError, AttributeError):  # another DeepSpeed version: its files will not name it
                pass
    return found


def load_scanned(path: Path, **kwargs):
    """torch.load of a file that passed `scan_file`, with torch's restricted (weights_only) unpickler;
    DeepSpeed's loss scalers and enums, which that unpickler does not know, are allowed by name."""
    import torch

    scan_file(path)
    with torch.serialization.safe_globals(_deepspeed_globals()):
        return torch.load(path, weights_only=True, **kwargs)
