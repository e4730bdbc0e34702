"""The serving engine (modelhub.engine): the scheduler, step-level batching, arrivals, faults."""
