#!/bin/bash
# SLURM example: 2 nodes x 8 GPUs, DeepSpeed ZeRO-2, one `accelerate launch` per node.
#   sbatch launch/slurm_pretrain.sh configs/mhc_1b.yaml [dotted overrides...]
# Multi-node is configuration: the accelerate config names 2 machines x 8 processes, this
# script fills in the rank of each node and the address of the first one.
# SIGTERM before the time limit (--signal) makes the trainer checkpoint and stop; resubmitting
# (or --requeue) resumes from the latest complete checkpoint (checkpoint.resume=auto).
#SBATCH --job-name=mhc-lm
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1          # one launcher per node; it starts 8 processes
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=48:00:00
#SBATCH --signal=B:TERM@300          # SIGTERM to the batch shell 5 minutes before the limit
#SBATCH --requeue
#SBATCH --output=logs/%x-%j.out

set -euo pipefail
CONFIG=${1:?usage: sbatch launch/slurm_pretrain.sh CONFIG.yaml [overrides...]}
shift
ACCEL_CONFIG=${ACCEL_CONFIG:-configs/accelerate/deepspeed_zero2_2x8gpu.yaml}
MAIN_IP=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MAIN_PORT=${MAIN_PORT:-29500}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
cd "${SLURM_SUBMIT_DIR:-.}"               # the repo root: config paths are relative to it
# torchrun gives the workers this long after forwarding SIGTERM before it SIGKILLs them (default
# 30 s): enough to write a checkpoint of the model + optimizer states, under the 300 s lead above.
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-240}
mkdir -p logs
# source .venv/bin/activate              # your environment here
# Slurm >= 22.05: srun no longer inherits --cpus-per-task from sbatch, so without this the step (the
# launcher, its 8 workers and their data loaders) would run on 1 CPU per node.
CPUS_PER_TASK=${SLURM_CPUS_PER_TASK:-64}
export SRUN_CPUS_PER_TASK=$CPUS_PER_TASK

# srun starts one launcher per node; SLURM_NODEID is that node's machine rank.
srun --kill-on-bad-exit=1 --cpus-per-task="$CPUS_PER_TASK" bash -c "accelerate launch \
    --config_file $ACCEL_CONFIG \
    --num_machines $SLURM_NNODES \
    --num_processes $((SLURM_NNODES * GPUS_PER_NODE)) \
    --machine_rank \$SLURM_NODEID \
    --main_process_ip $MAIN_IP \
    --main_process_port $MAIN_PORT \
    launch/pretrain.py --config $CONFIG $*" &
wait_pid=$!
trap 'echo "SIGTERM: forwarding to the launchers"; kill -TERM $wait_pid; wait $wait_pid' TERM
wait $wait_pid
