"""``exporter matrix``: the zoo x runtime x precision matrix, fanned out on local worker processes
or on Ray.

* :mod:`.plan` - the plan file (models x formats x precisions x options), validated up front, and
  its expansion into plain-data :class:`~.plan.JobSpec` s;
* :mod:`.jobs` - :func:`~.jobs.run_job`, the one job function (export or re-use, then parity);
* :mod:`.executors` - the local process pool and Ray, behind one small interface;
* :mod:`.reference` - the eager reference (parity inputs + eager outputs), computed once per
  model by the driver and shared with its jobs;
* :mod:`.storage` - ``--output`` as a local directory or any fsspec URL (jobs upload to it);
* :mod:`.driver` - shared calibration data, skip / retry / progress / Ctrl-C, on any executor;
* :mod:`.merge` - the merged report.md / report.json, saying where each job ran.
"""
from .plan import JobSpec, Plan, load_plan, parse_plan

__all__ = ["JobSpec", "Plan", "load_plan", "parse_plan"]
