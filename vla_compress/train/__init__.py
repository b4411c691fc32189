"""Behaviour-cloning training of the reference family on LeRobot-layout demonstrations."""
