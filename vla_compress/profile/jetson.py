"""Jetson specifics for measurements: power mode (`nvpmodel -q`) and board power from the INA3221
rail monitors in sysfs. Every reader returns None where the file or tool is missing or unreadable,
so the same measurement code runs on any machine (on a non-Jetson host these are skipped)."""

from __future__ import annotations

import glob
import shutil
import subprocess
import threading
import time
from pathlib import Path

# INA3221 rail monitors (JetPack 5/6): in*_label names the rail, in*_input is mV, curr*_input mA.
_HWMON_GLOBS = ("/sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*", "/sys/bus/i2c/drivers/ina3221x/*/iio:device*")


def is_jetson() -> bool:
    """True on an NVIDIA Jetson (Tegra SoC)."""
    if Path("/etc/nv_tegra_release").is_file():
        return True
    try:
        return "tegra" in Path("/sys/devices/soc0/family").read_text().lower()
    except OSError:
        return False


def power_mode() -> str | None:
    """The nvpmodel power mode name (e.g. "MAXN"), or None where nvpmodel is unavailable."""
    exe = shutil.which("nvpmodel")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "-q"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        if "Power Mode" in line and ":" in line:
            return line.split(":", 1)[1].strip()
    return None


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None


def rails() -> dict[str, tuple[str, str]]:
    """rail label -> (voltage file, current file) for every readable INA3221 channel."""
    out = {}
    for pattern in _HWMON_GLOBS:
        for d in glob.glob(pattern):
            for label_file in glob.glob(f"{d}/in*_label"):
                n = label_file.rsplit("/in", 1)[1].split("_", 1)[0]
                try:
                    label = Path(label_file).read_text().strip()
                except OSError:
                    continue
                v, c = f"{d}/in{n}_input", f"{d}/curr{n}_input"
                if _read_int(v) is not None and _read_int(c) is not None:
                    out[label] = (v, c)
    return out


def read_power_w(channels: dict[str, tuple[str, str]] | None = None) -> dict[str, float]:
    """Instantaneous power per rail in watts (mV * mA / 1e6)."""
    out = {}
    for label, (v, c) in (channels if channels is not None else rails()).items():
        mv, ma = _read_int(v), _read_int(c)
        if mv is not None and ma is not None:
            out[label] = mv * ma / 1e6
    return out


class PowerSampler:
    """Samples the rails in a background thread while a block runs (a no-op where there are none):

        with PowerSampler() as p: ...timed steps...
        p.result()  # {"rails_w_mean": {...}, "total_w_mean": ..., "samples": n} or None
    """

    def __init__(self, period_s: float = 0.05):
        self.period_s = period_s
        self.channels = rails() if is_jetson() else {}
        self.samples: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(read_power_w(self.channels))
            self._stop.wait(self.period_s)

    def __enter__(self) -> "PowerSampler":
        if self.channels:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)

    def result(self) -> dict | None:
        if not self.samples:
            return None
        labels = sorted({k for s in self.samples for k in s})
        mean = {k: sum(s.get(k, 0.0) for s in self.samples) / len(self.samples) for k in labels}
        # VIN_SYS_5V0 (AGX Orin) / VDD_IN (Orin NX, Nano) is the module input; else sum the rails
        total = next((mean[k] for k in ("VIN_SYS_5V0", "VDD_IN") if k in mean), sum(mean.values()))
        return {"rails_w_mean": mean, "total_w_mean": total, "samples": len(self.samples),
                "sampled_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "note": "INA3221 rails sampled every %.0f ms during the timed steps" % (self.period_s * 1e3)}
