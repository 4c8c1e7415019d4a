"""The running agent: Storage SCP, quiet-timer scheduler, job worker, pipeline, sender, service wiring."""
