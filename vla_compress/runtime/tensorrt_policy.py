"""TensorRT policy: runs the engines of a TensorRT artifact directory on a CUDA GPU.

The engines are built from the artifact's ONNX graphs with the same I/O names, so the ONNX
Runtime policy's driving loop (one policy_step call for a regression head; prefill, then one
decode call per action token with the KV cache for a tokens head; prefix, then one denoise_step
call per Euler step for a flow head: one engine per graph) runs them unchanged: each
graph is an `EngineSession` with ORT's `run(output_names, feeds)` / `get_inputs()` surface.
Device buffers are torch CUDA tensors when torch has CUDA, else cuda-python allocations; inputs
and outputs cross to the host each call (the decode loop works on numpy), which is simple and
correct, not the fastest: keeping the KV cache on the device is the next optimisation.

Engines are not portable: the runtime refuses an engine whose engine_info.json names another
compute capability or TensorRT version than this machine's, with the command that rebuilds it.

Options (PolicySpec("tensorrt", artifact_dir, options)): device (CUDA index, default 0),
execute_steps, allow_failed, verify, name.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from ..errors import ConfigError, ExportError
from .onnxruntime_policy import OnnxGraphs, OnnxRuntimePolicy, check_flow_loop
from .policy import Policy, artifact_options, open_artifact


def engine_runnable(artifact) -> tuple[bool, str]:
    """(True, "") when every engine of `artifact` exists and was built for this GPU and TensorRT."""
    missing = [g["engine"] for g in artifact.manifest["graphs"].values() if not (artifact.path / g["engine"]).is_file()]
    if missing:
        return False, f"no engine built yet ({', '.join(missing)} missing: run build_engine.py on the device)"
    try:
        check_engine_info(artifact.path)
    except (ExportError, ConfigError) as e:
        return False, str(e)
    return True, ""


def check_engine_info(root: Path, device: int = 0) -> dict:
    """Compare engine_info.json with this machine: same compute capability and TensorRT version."""
    from ..export.tensorrt.build_engine import BuildError, cuda_device

    info_path = Path(root) / "engine_info.json"
    if not info_path.is_file():
        raise ExportError(info_path, "missing: the engines' device and TensorRT version are unknown; rebuild with build_engine.py")
    info = json.loads(info_path.read_text())
    try:
        import tensorrt as trt
    except ImportError:
        raise ConfigError("the tensorrt package is not installed here: cannot run TensorRT engines") from None
    try:
        here = cuda_device(device)
    except BuildError as e:
        raise ConfigError(str(e)) from None
    built = info["device"]
    if built["compute_capability"] != here["compute_capability"] or info["tensorrt"] != trt.__version__:
        raise ExportError(root, f"engines were built on {built['name']} (compute capability {built['compute_capability']}) "
                                f"with TensorRT {info['tensorrt']}; this is {here['name']} ({here['compute_capability']}) "
                                f"with TensorRT {trt.__version__}: rebuild them here with `python3 build_engine.py`")
    return info


class _TorchBuffers:
    """Device memory as torch CUDA tensors."""

    def __init__(self, device: int):
        import torch

        self.torch, self.device = torch, torch.device("cuda", device)
        # torch's current stream: the uploads, the engine and the downloads are then ordered on
        # one stream without extra events
        self.stream = torch.cuda.current_stream(self.device)
        self.handle = self.stream.cuda_stream

    def upload(self, array: np.ndarray) -> Any:
        return self.torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    def empty(self, shape: tuple, dtype: np.dtype) -> Any:
        t = self.torch.from_numpy(np.empty(0, dtype))
        return self.torch.empty(shape, dtype=t.dtype, device=self.device)

    @staticmethod
    def ptr(buf: Any) -> int:
        return buf.data_ptr()

    def download(self, buf: Any) -> np.ndarray:
        self.stream.synchronize()
        return buf.cpu().numpy()

    def sync(self) -> None:
        self.stream.synchronize()


class _CudartBuffers:
    """Device memory through cuda-python's runtime bindings (when torch has no CUDA)."""

    def __init__(self, device: int):
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart  # cuda-python < 12.6
        self.cudart = cudart
        self._check(cudart.cudaSetDevice(device))
        self.handle = int(self._check(cudart.cudaStreamCreate()))
        self._live: list = []

    def _check(self, result):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise ExportError("cuda", f"CUDA runtime call failed: {err}")
        return rest[0] if rest else None

    def _alloc(self, nbytes: int) -> int:
        ptr = int(self._check(self.cudart.cudaMalloc(max(nbytes, 1))))
        self._live.append(ptr)
        return ptr

    def upload(self, array: np.ndarray) -> Any:
        a = np.ascontiguousarray(array)
        ptr = self._alloc(a.nbytes)
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.cudart.cudaMemcpy(ptr, a.ctypes.data, a.nbytes, kind))
        return SimpleNamespace(ptr=ptr, shape=a.shape, dtype=a.dtype)

    def empty(self, shape: tuple, dtype: np.dtype) -> Any:
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return SimpleNamespace(ptr=self._alloc(n), shape=tuple(shape), dtype=np.dtype(dtype))

    @staticmethod
    def ptr(buf: Any) -> int:
        return buf.ptr

    def download(self, buf: Any) -> np.ndarray:
        self.sync()
        out = np.empty(buf.shape, buf.dtype)
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.cudart.cudaMemcpy(out.ctypes.data, buf.ptr, out.nbytes, kind))
        return out

    def sync(self) -> None:
        self._check(self.cudart.cudaStreamSynchronize(self.handle))

    def release(self) -> None:
        for ptr in self._live:
            self.cudart.cudaFree(ptr)
        self._live.clear()


def device_buffers(device: int = 0):
    """torch CUDA tensors if torch sees a GPU, else cuda-python; a clear error when neither can."""
    try:
        import torch

        if torch.cuda.is_available():
            return _TorchBuffers(device)
    except ImportError:
        pass
    try:
        return _CudartBuffers(device)
    except ImportError:
        raise ConfigError("running TensorRT engines needs a CUDA-enabled torch or cuda-python; neither is "
                          "available here") from None


class EngineSession:
    """One engine with an execution context, called like an onnxruntime InferenceSession."""

    def __init__(self, path: Path, runtime: Any, buffers: Any):
        import tensorrt as trt

        self.engine = runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise ExportError(path, "TensorRT could not deserialize the engine (built by another TensorRT version?)")
        self.context = self.engine.create_execution_context()
        self.buffers = buffers
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if n not in self.input_names]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}

    def get_inputs(self) -> list:
        return [SimpleNamespace(name=n) for n in self.input_names]

    def run(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        live = []  # keep device buffers alive until the outputs are copied back
        for name in self.input_names:
            buf = self.buffers.upload(np.asarray(feeds[name], dtype=self.dtypes[name]))
            live.append(buf)
            self.context.set_input_shape(name, tuple(np.shape(feeds[name])))
            self.context.set_tensor_address(name, self.buffers.ptr(buf))
        outs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise ExportError(name, f"output shape {shape} is not determined by the input shapes")
            outs[name] = self.buffers.empty(shape, self.dtypes[name])
            self.context.set_tensor_address(name, self.buffers.ptr(outs[name]))
        if not self.context.execute_async_v3(self.buffers.handle):
            raise ExportError("tensorrt", "execute_async_v3 failed (see the TensorRT log)")
        result = [self.buffers.download(outs[n]) for n in output_names]
        if hasattr(self.buffers, "release"):
            self.buffers.release()
        return result


class TensorRTGraphs(OnnxGraphs):
    """OnnxGraphs' driving loop over TensorRT engines instead of ONNX Runtime sessions."""

    def __init__(self, artifact, device: int = 0):
        check_engine_info(artifact.path, device)  # first: the clearest error when no engine/TensorRT is here
        import tensorrt as trt

        self.artifact = artifact
        self.meta = artifact.manifest["model"]
        self.providers = ["TensorRT"]
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        buffers = device_buffers(device)
        self.sessions = {name: EngineSession(artifact.file(g["engine"]), self.runtime, buffers)
                         for name, g in artifact.manifest["graphs"].items()}
        if self.head == "flow":
            check_flow_loop(artifact, self.sessions)
        self.last_timing: dict[str, float] = {}
        self.decode_feeds = None


class TensorRTPolicy(OnnxRuntimePolicy):
    """Policy over a TensorRT artifact directory; preprocessing and timing as the ONNX policy."""

    runtime = "tensorrt"

    def __init__(self, artifact_dir: str | Path, device: int = 0, execute_steps: int | None = None,
                 allow_failed: bool = False, verify: bool = False, name: str = "tensorrt"):
        Policy.__init__(self, execute_steps)
        self.artifact, self.processor = open_artifact(artifact_dir, "tensorrt", "tensorrt", "a TensorRT artifact",
                                                      allow_failed, verify)
        self.name = name
        self.graphs = TensorRTGraphs(self.artifact, device=device)
        self.component_latencies_s: dict[str, list[float]] = {}

    @classmethod
    def from_spec(cls, spec: Any) -> "TensorRTPolicy":
        """The policy of PolicySpec("tensorrt", artifact_dir, options): device, execute_steps, ..."""
        o = spec.options
        return cls(spec.path, device=o.get("device", 0), **artifact_options(o, "tensorrt"))
