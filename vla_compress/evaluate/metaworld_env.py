"""MetaWorld 3.x tasks as robot observations: RGB frames, an instruction and proprio only.

A policy sees what a real robot would: a camera image, the instruction, and its own state
(end-effector position and gripper opening). MetaWorld's 39-d observation also carries
object and goal poses; those are deliberately withheld, otherwise a policy could succeed
without looking and nothing compression does to vision would show in its success rate.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import SimulationError

MT10_TASKS: tuple[str, ...] = (
    "reach-v3",
    "push-v3",
    "pick-place-v3",
    "door-open-v3",
    "drawer-open-v3",
    "drawer-close-v3",
    "button-press-topdown-v3",
    "peg-insert-side-v3",
    "window-open-v3",
    "window-close-v3",
)

# MetaWorld's obs[0:3] is the hand position and obs[3] the gripper opening; obs[4:] are
# object poses and the goal, which the policy must not see.
PROPRIO_DIM = 4
ACTION_DIM = 4
# MetaWorld steps MuJoCo with frame_skip=5 at dt=2.5 ms: 80 control steps per second.
CONTROL_HZ = 80


def ensure_gl_backend() -> str:
    """Pick a headless MuJoCo GL backend before mujoco is imported: EGL, else OSMesa."""
    if "MUJOCO_GL" in os.environ:
        return os.environ["MUJOCO_GL"]
    import ctypes.util

    backend = "egl" if ctypes.util.find_library("EGL") else "osmesa"
    os.environ["MUJOCO_GL"] = backend
    os.environ.setdefault("PYOPENGL_PLATFORM", backend)
    return backend


def instruction_for(task: str) -> str:
    """The natural-language instruction for a MetaWorld task, from the language-world package."""
    from language_world import TASK_DESCRIPTIONS

    key = task.removesuffix("-v3").removesuffix("-v2")
    if key not in TASK_DESCRIPTIONS:
        raise SimulationError(f"no instruction for MetaWorld task {task!r} in language_world.TASK_DESCRIPTIONS")
    return TASK_DESCRIPTIONS[key]


@dataclass(frozen=True)
class CameraSpec:
    name: str = "corner"
    size: int = 128

    @property
    def flip(self) -> bool:
        # MetaWorld's "corner" camera renders upside down.
        return self.name == "corner"


def camera_specs(camera: "CameraSpec | tuple[CameraSpec, ...] | list[CameraSpec]") -> tuple[CameraSpec, ...]:
    """One camera or several, as a tuple (rendered and returned in this order)."""
    cams = (camera,) if isinstance(camera, CameraSpec) else tuple(camera)
    if not cams:
        raise SimulationError("at least one camera is needed")
    if len({c.name for c in cams}) != len(cams):
        raise SimulationError(f"camera names repeat: {[c.name for c in cams]}")
    return cams


# the cameras of MetaWorld's scene (sawyer_xyz_base.xml), which CameraSpec can render
METAWORLD_CAMERAS = ("corner", "corner2", "corner3", "corner4", "topview", "gripperPOV", "behindGripper")


def declared_cameras(obj: object, accept=lambda cams: True) -> tuple[str, ...] | None:
    """The camera names a model, policy or artifact processor reads (the first `cameras` of the object,
    its `vla`, its `processor` that `accept` takes), or None."""
    for owner in (obj, getattr(obj, "vla", None), getattr(obj, "processor", None)):
        try:
            cams = getattr(owner, "cameras", None)
        except NotImplementedError:  # an adapter without dummy_observation
            cams = None
        if cams and all(isinstance(c, str) for c in cams) and accept(cams):
            return tuple(cams)
    return None


def cameras_read_by(obj: object) -> tuple[str, ...] | None:
    """The MetaWorld camera names a model, policy or artifact processor reads, when they are MetaWorld
    cameras (the reference family names them); None means the default camera."""
    return declared_cameras(obj, lambda cams: all(c in METAWORLD_CAMERAS for c in cams))


def make_gym_env(task: str, seed: int, max_steps: int = 300):
    """The gymnasium MetaWorld env for one task, its placement seeded by `seed` (call
    `.reset(seed=seed)` next); no renderer (replays that only need states use this directly)."""
    ensure_gl_backend()
    import gymnasium as gym
    import metaworld  # noqa: F401  (registers Meta-World/* ids)

    try:
        return gym.make("Meta-World/MT1", env_name=task, seed=int(seed), terminate_on_success=True,
                        max_episode_steps=max_steps)
    except Exception as e:
        raise SimulationError(f"cannot create MetaWorld task {task!r}: {e}") from None


class StepFrames(Mapping):
    """The camera frames of one env step, each rendered the first time it is read.

    A policy that executes an action chunk reads the images on one step in `chunk`; rendering is
    about half of a MetaWorld step's CPU time, so the frames nobody reads are never rendered. The
    physics does not depend on rendering, so episodes are identical either way. A frame can only be
    read while the env is still at the step it belongs to; a later read is a SimulationError (it
    would show another state)."""

    def __init__(self, env: "MetaWorldEnv", tick: int):
        self._env, self._tick, self._frames = env, tick, {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._frames:
            cam = self._env.camera(name)
            if self._env._tick != self._tick:
                raise SimulationError(f"MetaWorld task {self._env.task!r}: the {name!r} frame of an earlier step was "
                                      "read after the env moved on; read an observation's images before the next "
                                      "step() or reset()")
            self._frames[name] = self._env.render(cam)
        return self._frames[name]

    def __iter__(self) -> Iterator[str]:
        return (c.name for c in self._env.cameras)

    def __len__(self) -> int:
        return len(self._env.cameras)

    def __repr__(self) -> str:
        return f"StepFrames({list(self)}, rendered={list(self._frames)})"


class MetaWorldEnv:
    """One MetaWorld task instance, seeded, rendering one or more cameras on the CPU
    (e.g. the third-person "corner" view and the wrist-mounted "gripperPOV").

    A fresh gymnasium env is made per episode: `gym.make(seed=s)` followed by
    `reset(seed=s)` is the only sequence we found that makes the object/goal placement a
    pure function of `s` (a second reset with the same seed gives another placement).
    """

    def __init__(self, task: str, camera: CameraSpec | tuple[CameraSpec, ...] = CameraSpec(), max_steps: int = 300):
        ensure_gl_backend()
        if task not in MT10_TASKS:
            import metaworld  # noqa: F401  (registers the envs; validates the name below)
        self.task = task
        self.cameras = camera_specs(camera)
        self.max_steps = max_steps
        self.instruction = instruction_for(task)
        self._env = None
        self._renderers: dict = {}
        self._tick = 0  # advanced by every reset() and step(): the frames of older observations are stale

    def camera(self, name: str) -> CameraSpec:
        for c in self.cameras:
            if c.name == name:
                return c
        raise KeyError(name)

    def reset(self, seed: int) -> tuple[dict, np.ndarray]:
        """Start an episode with a seeded placement; returns (observation, raw 39-d state)."""
        import mujoco

        self.close()
        self._env = make_gym_env(self.task, seed, self.max_steps)
        raw, _ = self._env.reset(seed=int(seed))
        u = self._env.unwrapped
        self._renderers = {}
        for size in sorted({c.size for c in self.cameras}):
            r = mujoco.Renderer(u.model, size, size)
            # Shadows and reflections take a CPU frame from ~100 ms to ~15 ms and carry no task information.
            r.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            r.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
            self._renderers[size] = r
        for c in self.cameras:  # frames render on first read: check the names now, not mid-episode
            if mujoco.mj_name2id(u.model, mujoco.mjtObj.mjOBJ_CAMERA, c.name) < 0:
                raise SimulationError(f"MetaWorld task {self.task!r} has no camera {c.name!r} "
                                      f"(its cameras: {', '.join(METAWORLD_CAMERAS)})")
        self.steps = 0
        return self._observe(raw), raw

    def step(self, action: np.ndarray) -> tuple[dict, np.ndarray, bool, bool]:
        """Apply an action (clipped to [-1, 1] as the env does); returns (obs, raw, success, done)."""
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(ACTION_DIM), -1.0, 1.0)
        raw, _, terminated, truncated, info = self._env.step(action)
        self.steps += 1
        success = bool(info.get("success", 0.0))
        done = bool(terminated or truncated or success or self.steps >= self.max_steps)
        return self._observe(raw), raw, success, done

    def render(self, camera: CameraSpec | None = None) -> np.ndarray:
        """One camera's RGB frame (the first configured camera when none is named)."""
        cam = camera or self.cameras[0]
        u = self._env.unwrapped
        r = self._renderers[cam.size]
        try:
            r.update_scene(u.data, camera=cam.name)
        except ValueError as e:
            raise SimulationError(f"MetaWorld task {self.task!r} has no camera {cam.name!r}: {e}") from None
        img = r.render()
        return np.ascontiguousarray(img[::-1] if cam.flip else img)

    def _observe(self, raw: np.ndarray) -> dict:
        self._tick += 1
        return {
            "images": StepFrames(self, self._tick),
            "state": np.asarray(raw[:PROPRIO_DIM], dtype=np.float32),
            "instruction": self.instruction,
        }

    def close(self) -> None:
        self._tick += 1
        for r in getattr(self, "_renderers", {}).values():
            try:
                r.close()
            except Exception:  # EGL teardown errors at exit are harmless
                pass
        self._renderers = {}
        if self._env is not None:
            self._env.close()
            self._env = None
