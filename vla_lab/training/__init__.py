"""Training: the trainer and its configuration (:mod:`.train`), the auxiliary losses (:mod:`.auxiliary`) and a
training run's directory (:mod:`.run_dir`), on tabletop scenes or LIBERO demonstrations."""
