"""Ingest: folders (or s3:// prefixes) in, rows out, incrementally.

  scan      walk folders and prefixes: which files are images, which folders to skip
  sources   list and read s3:// and gs:// objects
  captions  manifests, sidecar files, image descriptions; which caption a row gets
  decode    one file -> pixels for the model, or a one-line failure (runs in worker processes)
  video     one video file -> its facts and sampled moments (PyAV; runs in worker processes too)
  pool      a bounded pool of decode processes
  plan      what a run will decode, move, delete and re-caption
  embed     the one embed step: pixels -> vectors -> finite check -> rows (local, Ray, reembed)
  sync      the run itself: scan, plan, an engine, captions, deletions; the report
  local     the engine on this machine
  ray       the engine on a Ray cluster (optional dependency)

Nothing is imported here: a spawned decode worker imports pipeline.ingest.decode, and must not
pay for LanceDB, torch or Ray.
"""
