"""`python -m vla_compress.export.tensorrt PATH...`: the TensorRT-readiness check (see readiness.py)."""

from .readiness import main

raise SystemExit(main())
