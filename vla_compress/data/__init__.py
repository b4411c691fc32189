"""Datasets in the LeRobot v3 layout: written from simulation demos, read for training and calibration."""

from .lerobot import Episode, LeRobotDataset, LeRobotWriter

__all__ = ["Episode", "LeRobotDataset", "LeRobotWriter"]
