"""MetaWorld as LeRobot 0.6 evaluates it (`lerobot-eval --env.type=metaworld`): the `lerobot-metaworld`
suite, so a checkpoint trained with LeRobot on MetaWorld sees here the observations it saw there.

The conventions, each read from LeRobot's source (src/lerobot/envs/metaworld.py and configs.py,
scripts/lerobot_eval.py at v0.6.x; docs/notes/lerobot-metaworld-libero.md cites the lines):
  env        `metaworld.MT1(task, seed=42)`, the task class built with render_mode="rgb_array" and
             camera_name="corner2", `set_task(train_tasks[0])`, one reset, then `_freeze_rand_vec = False`
             and `seeded_rand_vec = True`; an episode with seed s: `env.seed(s)` then `env.reset()`.
  seeds      episode j of every task has seed 1000 + j (lerobot-eval's default `seed: 1000`).
  camera     corner2 with its position moved to (0.75, 0.075, 0.7) (orientation and fovy as in
             MetaWorld's scene), rendered by Gymnasium's MuJoCo renderer at MetaWorld's default 480 x 480
             with its default scene options (shadows and reflections on), then rotated 180 degrees
             (np.flip(image, (0, 1))): one uint8 HxWx3 frame, LeRobot's `pixels` -> `observation.image`.
  state      `agent_pos` = MetaWorld's observation[:4] (hand position, gripper opening), LeRobot's
             `observation.state`.
  episode    at most 500 steps (MT1's max_path_length; LeRobot's episode_length config is not read),
             actions passed unclipped (MetaWorld clips them), the episode ends at the first step whose
             info["success"] is set and counts as a success.
  text       LeRobot's metaworld_config.json TASK_DESCRIPTIONS (MT10's are below), LeRobot's `task`.
Feature mapping: the frame goes to the one camera the policy declares (e.g. SmolVLA's
`observation.images.camera1`, LeRobot's rename_map target); placeholder cameras (SmolVLA's
empty_cameras) stay absent, as in lerobot-eval. A policy that declares more real cameras than the one
this env renders gets a clear error naming them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError, SimulationError
from .metaworld_env import CameraSpec, StepFrames, declared_cameras, ensure_gl_backend

CAMERA = "corner2"
CAMERA_POS = (0.75, 0.075, 0.7)
SIZE = 480
MAX_STEPS = 500
FIRST_SEED = 1000
MT1_SEED = 42
DEFAULT_CAMERA_KEY = "image"  # observation.image: a single-camera MetaWorld dataset's image feature
# LeRobot's metaworld_config.json "TASK_DESCRIPTIONS" for the MT10 tasks (no trailing period)
TASK_DESCRIPTIONS = {
    "reach-v3": "Reach a goal position",
    "push-v3": "Push the puck to a goal",
    "pick-place-v3": "Pick and place a puck to a goal",
    "door-open-v3": "Open a door with a revolving joint",
    "drawer-open-v3": "Open a drawer",
    "drawer-close-v3": "Push and close a drawer",
    "button-press-topdown-v3": "Press a button from the top",
    "peg-insert-side-v3": "Insert a peg sideways",
    "window-open-v3": "Push and open a window",
    "window-close-v3": "Push and close a window",
}


def seed_for(task: str, episode: int) -> int:
    """lerobot-eval's seeds: the same for every task."""
    return FIRST_SEED + int(episode)


def facts() -> dict[str, Any]:
    """What a verdict on this suite was measured on (recorded with every evaluation)."""
    import metaworld
    import mujoco

    return {"package": "metaworld", "version": getattr(metaworld, "__version__", "unknown"), "mujoco": mujoco.__version__,
            "reproduces": "LeRobot 0.6 MetaworldEnv / lerobot-eval", "fidelity": "conventions read from LeRobot's source",
            "conventions": {"camera": CAMERA, "camera_pos": list(CAMERA_POS), "size": SIZE, "flip": "180 degrees",
                            "renderer": "gymnasium MujocoRenderer, default scene options",
                            "state": "observation[:4]", "max_steps": MAX_STEPS, "seeds": f"{FIRST_SEED} + episode",
                            "success": "first step with info['success']", "instructions": "LeRobot TASK_DESCRIPTIONS"}}


class LeRobotMetaWorldEnv:
    """One MetaWorld task in LeRobot's conventions (module docstring); the frame is exposed under
    `camera_key`, the name of the policy's one image input."""

    def __init__(self, task: str, camera_key: str = DEFAULT_CAMERA_KEY, max_steps: int = MAX_STEPS):
        ensure_gl_backend()
        if task not in TASK_DESCRIPTIONS:
            raise ConfigError(f"lerobot-metaworld: no LeRobot task description for {task!r} here (this suite carries "
                              f"MT10's: {', '.join(TASK_DESCRIPTIONS)})")
        if not 1 <= int(max_steps) <= MAX_STEPS:
            raise ConfigError(f"lerobot-metaworld: max_steps must be in [1, {MAX_STEPS}] (MT1 stops at {MAX_STEPS}), "
                              f"got {max_steps}")
        self.task, self.max_steps = task, int(max_steps)
        self.instruction = TASK_DESCRIPTIONS[task]
        self.cameras = (CameraSpec(camera_key, SIZE),)
        self._env = None
        self._tick = 0
        self.steps = 0

    def camera(self, name: str) -> CameraSpec:
        if name != self.cameras[0].name:
            raise KeyError(name)
        return self.cameras[0]

    def _make(self):
        import metaworld
        import mujoco

        mt1 = metaworld.MT1(self.task, seed=MT1_SEED)
        env = mt1.train_classes[self.task](render_mode="rgb_array", camera_name=CAMERA)
        env.set_task(mt1.train_tasks[0])
        cam = mujoco.mj_name2id(env.model, mujoco.mjtObj.mjOBJ_CAMERA, CAMERA)
        if cam < 0:
            raise SimulationError(f"MetaWorld task {self.task!r} has no camera {CAMERA!r}")
        env.model.cam_pos[cam] = CAMERA_POS
        env.reset()
        env._freeze_rand_vec = False  # LeRobot's switch to seeded random placements
        env.seeded_rand_vec = True
        return env

    def reset(self, seed: int) -> tuple[dict, np.ndarray]:
        self.close()
        try:
            self._env = self._make()
            self._env.seed(int(seed))
            raw, _ = self._env.reset()
        except (ConfigError, SimulationError):
            raise
        except Exception as e:  # noqa: BLE001  (MetaWorld / MuJoCo errors)
            raise SimulationError(f"cannot create MetaWorld task {self.task!r} as LeRobot does: {e}") from None
        self.steps = 0
        return self._observe(raw), raw

    def step(self, action: np.ndarray) -> tuple[dict, np.ndarray, bool, bool]:
        raw, _, _, truncated, info = self._env.step(np.asarray(action, dtype=np.float32).reshape(4))
        self.steps += 1
        success = bool(info.get("success", 0))
        done = bool(success or truncated or self.steps >= self.max_steps)
        return self._observe(raw), raw, success, done

    def render(self, camera: CameraSpec | None = None) -> np.ndarray:
        """The frame LeRobot's wrapper returns: Gymnasium's upright rgb_array rotated by 180 degrees."""
        return np.ascontiguousarray(np.flip(self._env.render(), (0, 1)))

    def _observe(self, raw: np.ndarray) -> dict:
        self._tick += 1
        return {"images": StepFrames(self, self._tick), "state": np.asarray(raw[:4], dtype=np.float32),
                "instruction": self.instruction}

    def close(self) -> None:
        self._tick += 1
        if self._env is not None:
            try:
                self._env.close()
            except Exception:  # noqa: BLE001  (GL teardown at exit)
                pass
            self._env = None


def policy_cameras(policy: Any) -> tuple[str, ...] | None:
    """The camera names a policy's observations carry, whatever they are called (a torch model's
    `cameras`, or an artifact processor's, placeholders included)."""
    return declared_cameras(policy)


def camera_key_for(cameras: tuple[str, ...] | None) -> str:
    """The policy input the frame goes to: its one real camera (placeholder cameras left out)."""
    if not cameras:
        return DEFAULT_CAMERA_KEY
    real = [c for c in cameras if not c.startswith("empty_camera")]
    if len(real) != 1:
        raise ConfigError(f"lerobot-metaworld renders one camera ({CAMERA}, as LeRobot's MetaworldEnv); the policy "
                          f"reads {len(real)}: {', '.join(real) or '(none)'}")
    return real[0]
