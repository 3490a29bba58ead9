# Where the collector's state (env-step counter, replay buffer) sits under a checkpoint's `callbacks`: EnvStepper's
# `state_key`, the same for a subclass of it (an exploration of your own). Here, so that reading a checkpoint's
# counters (dqnlab.run.ckpt_file) imports neither torch's collector nor Lightning.
COLLECTOR_STATE_KEY = "EnvStepper"
