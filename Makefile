# The two commands of the README. Each does its own set-up (./install.sh) on a fresh clone.
.PHONY: demo test setup
setup:
	./install.sh

# The main job on the embedded default data: pretrain -> convert -> kNN, linear, detection -> tables.
demo: setup
	.venv/bin/simsiam demo $(ARGS)

# The test suite, including the real-SLURM tests against a two-node cluster on this machine.
test: setup
	bash .ci/test.sh
