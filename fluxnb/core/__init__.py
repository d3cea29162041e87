"""The ground floor: what every other room uses and that imports no other part of fluxnb.

Errors with their fixes (errors), files written atomically under one lock (files), user-given files read within
limits (userfiles), units, report-only facts (facts), the data shipped in the wheel (packaged), library internals
behind one guarded module (compat), the environment, the hub, GPU memory, footprints, log filters (quiet) and the
image sanity check.
"""
