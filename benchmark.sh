#!/usr/bin/env bash
# Benchmarks of the algos/ scripts: `bash benchmark.sh speed`, `gpu` and `learn`; see usage() below.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
PY=$("${PYTHON:-python}" -c 'import sys; print(sys.executable)')  # every job's interpreter; PYTHON chooses another

usage() {
  cat <<'EOF'
usage: bash benchmark.sh speed [SECONDS] [--out DIR]
       bash benchmark.sh gpu [--seconds S] [--budget S] [--out DIR]
       bash benchmark.sh learn [options]

speed  Training updates/s at batch 256 with the default networks (eager and --compile) and ms per evaluation action
       (best-of-N for one observation), timed for SECONDS (20) each, on CPU and, when present, CUDA. Prints the rows
       and writes DIR/speed.csv (default results/) with the machine: CPU model, cores, torch version, GPU and
       torch's CPU threads (set OMP_NUM_THREADS to choose them).

gpu    The check to run whenever a CUDA GPU is at hand (under 8 minutes; scripts/gpu_check.py): each script trained
       for a few hundred steps on CUDA with --save-model, eager and --compile, and resumed (eager MeanFlowQL with
       --eval-workers 4); whether each compiled run's step ran as CUDA graphs (TORCH_LOGS=perf_hints,cudagraphs);
       eager and --compile speed at each script's precision (TF32); evaluation speed (sequential vs vectorised); the
       aggregate updates/s of 1, 4 and 8 MeanFlowQL runs sharing the GPU. Writes DIR/{train,cudagraphs,speed,eval,
       share}.csv and a log per child (default results/gpu) and prints them. Each child has a timeout and none runs
       past --budget seconds (450). Exits 1, after a `FAILED <part> <run>: <why> (see <log>)` line per failed row,
       when a child failed, timed out or printed no result, and where --compile lacks a C compiler or the Python
       headers. Fails at once without CUDA.

learn  Learning evidence on data generated here:
         offline  meanflowql, ofql, mvp (--online-steps 0) and bc on cube-single-play-singletask-v0 and
                  pointmaze-medium-navigate-singletask-v0 (OGBench's oracles, scripts/make_ogbench_dataset.py) and
                  pointmaze-umaze (a stand-in of D4RL/pointmaze/umaze-v2 from a noisy waypoint controller,
                  scripts/make_minari_dataset.py), pointmaze-umaze-mixed (the same env, with half of the
                  controller's steps replaced by uniform random actions) and invertedpendulum-mixed (a stand-in of
                  mujoco/invertedpendulum/medium-v0: a balancing controller with half of its steps random,
                  scripts/make_pendulum_dataset.py); the -mixed data are what behaviour cloning copies and a
                  critic can see through; bandit-two-hills (scripts/bandit.py: a one-step contextual bandit whose
                  data mix two narrow reward hills, the better one depending on the state; 10000 episodes,
                  200 evaluation episodes, MVP with --horizon 1); --steps gradient steps each, default networks;
                  bc = algos/ofql.py --eta 0 --eval-candidates 1: OFQL's one-step MeanFlow behaviour cloning with
                  neither the Q term in the actor loss nor Q-based action selection (its critic trains but is unused)
         online   som on InvertedPendulum-v5 and HalfCheetah-v4, --online-steps environment steps each
       then aggregates every eval.jsonl (scripts/aggregate.py) into DIR/learn.csv (one row per task and algorithm),
       DIR/learn_runs.csv (one row per run), DIR/learn.md and learning curves DIR/learn_<task>.png (needs matplotlib;
       skipped with a message when it is not installed).

  --seeds N            seeds 1..N of every algorithm on every task                       (3)
  --steps K            offline gradient steps per run                                    (100000)
  --online-steps S     SOM environment steps per run                                     (100000)
  --episodes E         OGBench: train episodes of 1001 steps, plus E/10 validation       (1000, OGBench's size)
                       pointmaze-umaze(-mixed): episodes of 300 steps (the eval episode limit)
                       invertedpendulum-mixed: episodes until the pole falls (about 55 steps)
  --eval-episodes M    episodes per evaluation                                           (20)
  --evals V            evaluations per run, evenly spaced: the points of each curve      (10)
  --workers W          jobs at once; each gets nproc/W CPU threads (min 1)               (nproc)
  --out DIR            DIR/data: datasets; DIR/runs: one directory per job; reports      (results)
  --only REGEX         run and report only the jobs whose name ALGO__TASK__sSEED matches (bash regex)
  --job-args 'GLOB:FLAGS'  append FLAGS (split on spaces) to the jobs whose name matches GLOB; repeatable,
                       e.g. --job-args 'meanflowql__cube*:--alpha 300' --job-args '*:--compile'
  --tiny               smoke-test setting for tests/test_benchmark.py, its numbers mean nothing: every task, but on
                       each offline one only bc and one other algorithm (meanflowql on cube and invertedpendulum,
                       mvp on pointmaze-medium and the bandit, ofql on both UMaze tasks) and SOM on
                       InvertedPendulum-v5 alone; tiny networks and batches, 60-step dataset episodes, SOM updates
                       from step 100; unless given, --seeds 1 --steps 20 --online-steps 200 --episodes 2
                       --eval-episodes 1 --evals 1
  --report-only        only aggregate the jobs of the last sweep written to DIR
  --slurm              write Slurm job arrays DIR/slurm/{datasets,offline,online}.sbatch instead of running; each
                       task asks for 2 CPUs (datasets: 8) unless --sbatch sets --cpus-per-task
  --submit             with --slurm, submit them with sbatch (offline after datasets)
  --sbatch 'ARGS'      extra #SBATCH lines for the arrays, e.g. '--partition=gpu --gres=gpu:1 --time=12:00:00'

  Each job runs in DIR/runs/ALGO__TASK__sSEED/ (the script's runs/ inside, its output in train.log) and is skipped
  when it finished before with the same command (kept in its DONE marker). A failed job is reported with its exit
  code and log, marked in the tables, and rerun by the next invocation. Exit status 1 when a job failed or is missing.
  Do not start a second sweep on the same DIR while one runs: a job that is not finished is restarted.
EOF
}

die() {
  echo "benchmark.sh: $*" >&2
  exit 2
}

speed() {
  local seconds=20 out=results devices="cpu" algos algo device
  while (($#)); do
    case $1 in
      --out) (($# >= 2)) || die "--out needs a value"; out=$2; shift 2 ;;
      [0-9]*) seconds=$1; shift ;;
      *) die "unknown speed argument '$1' (see bash benchmark.sh help)" ;;
    esac
  done
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" && devices="cpu cuda"
  algos=$(cd scripts && "$PY" -c "import speed; print(*sorted(speed.SETUPS))")
  for algo in $algos; do
    for device in $devices; do
      "$PY" scripts/speed.py "$algo" --device "$device" --seconds "$seconds"
      "$PY" scripts/speed.py "$algo" --device "$device" --seconds "$seconds" --compile
    done
  done | "$PY" scripts/aggregate.py speed "$out"
}

# --- learn -----------------------------------------------------------------------------------------------------------

OFFLINE_ALGOS=(meanflowql ofql mvp bc)
OFFLINE_TASKS=(cube-single-play-singletask-v0 pointmaze-medium-navigate-singletask-v0 pointmaze-umaze
  pointmaze-umaze-mixed invertedpendulum-mixed bandit-two-hills)
ONLINE_TASKS=(InvertedPendulum-v5 HalfCheetah-v4)
UMAZE=D4RL/pointmaze/umaze-v2  # what --env-id pointmaze-umaze reads: a Minari stand-in made by make_minari_dataset.py
UMAZE_STEPS=300                # rows per stand-in episode: the eval env's episode limit
PENDULUM=mujoco/invertedpendulum/medium-v0  # what invertedpendulum-mixed reads: a stand-in by make_pendulum_dataset.py
MIXED_RANDOM_PROB=0.5          # the -mixed tasks: probability of a uniform random step instead of the controller's
BANDIT=meanflow-rl/bandit/two-hills-v0  # what bandit-two-hills reads: the project's own task, scripts/bandit.py
BANDIT_EPISODES=10000          # its one-step episodes (--tiny: 200)
BANDIT_EVAL_EPISODES=200       # one step each: evaluations of 200 states cost little and vary less

dataset_of() {  # offline task -> the dataset it reads (an OGBench file stem, or the Minari stand-in)
  case $1 in
    cube-single-play-singletask-v0) echo cube-single-play-v0 ;;
    pointmaze-medium-navigate-singletask-v0) echo pointmaze-medium-navigate-v0 ;;
    pointmaze-umaze) echo minari-pointmaze-umaze ;;
    pointmaze-umaze-mixed) echo minari-pointmaze-umaze-mixed ;;
    invertedpendulum-mixed) echo minari-invertedpendulum-mixed ;;
    bandit-two-hills) echo minari-bandit-two-hills ;;
  esac
}

env_id_of() {  # offline task -> the scripts' --env-id (both UMaze tasks are D4RL/pointmaze/umaze-v2, in two roots)
  case $1 in
    pointmaze-umaze*) echo pointmaze-umaze ;;
    invertedpendulum-mixed) echo "$PENDULUM" ;;
    bandit-two-hills) echo "$BANDIT" ;;
    *) echo "$1" ;;
  esac
}

minari_dir_of() {  # Minari stand-in -> its MINARI_DATASETS_PATH
  case $1 in
    minari-pointmaze-umaze) echo "$out/data/minari-${episodes}x${umaze_steps}" ;;
    minari-pointmaze-umaze-mixed) echo "$out/data/minari-random${MIXED_RANDOM_PROB}-${episodes}x${umaze_steps}" ;;
    minari-invertedpendulum-mixed) echo "$out/data/minari-pendulum-random${MIXED_RANDOM_PROB}-${episodes}" ;;
    minari-bandit-two-hills) echo "$out/data/minari-bandit-${bandit_episodes}" ;;
  esac
}

minari_id_of() {  # Minari stand-in -> its dataset id
  case $1 in
    minari-pointmaze-umaze*) echo "$UMAZE" ;;
    minari-invertedpendulum-mixed) echo "$PENDULUM" ;;
    minari-bandit-two-hills) echo "$BANDIT" ;;
  esac
}

have_dataset() {
  if [[ $1 == minari-* ]]; then
    [[ -f $(minari_dir_of "$1")/$(minari_id_of "$1")/data/metadata.json ]]
  else
    [[ -f $data_dir/$1.npz && -f $data_dir/$1-val.npz ]]
  fi
}

tiny_algo_of() {  # offline task -> the one algorithm that --tiny runs on it beside bc (each script on two tasks)
  case $1 in
    cube-* | invertedpendulum-*) echo meanflowql ;;
    pointmaze-umaze*) echo ofql ;;
    *) echo mvp ;;
  esac
}

tiny_flags() {  # the --tiny networks of each script
  case $1 in
    meanflowql) echo --actor-hidden-dim 32 --actor-depth 1 --critic-hidden-dim 32 --critic-layers 2 --batch-size 16 ;;
    ofql | bc) echo --hidden-dim 16 --num-layers 2 --time-emb-dim 8 --batch-size 16 --eval-candidates 4 ;;
    mvp) echo --actor-hidden-dim 32 --actor-layers 2 --critic-hidden-dim 32 --critic-layers 2 --num-samples 4 \
      --batch-size 16 ;;
    som) echo --hidden-dims 16 16 --critic-hidden-dims 16 16 --num-mc-samples 4 --num-samples 4 --batch-size 16 \
      --learning-starts 100 --alpha-e-interval 20 ;;
  esac
}

learn() {
  parse_learn_args "$@"
  if ((report_only)); then
    [[ -f $out/learn_jobs.tsv ]] || die "no sweep in $out (learn_jobs.tsv is missing)"
    exec "$PY" scripts/aggregate.py learn "$out"
  fi
  mkdir -p "$out/runs"
  printf 'name\talgo\ttask\tseed\tkind\tdir\n' >"$out/learn_jobs.tsv.tmp"
  local task algo seed script task_eval_episodes
  local -a data_flags task_flags
  for task in "${OFFLINE_TASKS[@]}"; do
    data_flags=()
    [[ $task == *singletask* ]] && data_flags=(--dataset-dir "$data_dir")  # OGBench's; the stand-in is Minari's
    task_eval_episodes=$eval_episodes
    [[ $task == bandit-* ]] && ((!tiny)) && task_eval_episodes=$BANDIT_EVAL_EPISODES
    for algo in "${OFFLINE_ALGOS[@]}"; do
      [[ $tiny == 1 && $algo != bc && $algo != "$(tiny_algo_of "$task")" ]] && continue
      script=$algo
      [[ $algo == bc ]] && script=ofql
      task_flags=()
      [[ $task == bandit-* && $algo == mvp ]] && task_flags=(--horizon 1)  # one-step episodes: no chunks
      for ((seed = 1; seed <= seeds; seed++)); do
        add_job offline "$algo" "$task" "$seed" "$ROOT/algos/$script.py" --env-id "$(env_id_of "$task")" \
          ${data_flags[@]+"${data_flags[@]}"} --seed "$seed" --offline-steps "$steps" --online-steps 0 \
          --eval-interval "$(at_least_1 $((steps / evals)))" --eval-episodes "$task_eval_episodes" \
          --log-interval "$(at_least_1 $((steps / 20)))" ${task_flags[@]+"${task_flags[@]}"}
      done
    done
  done
  local -a online_tasks=("${ONLINE_TASKS[@]}")
  ((tiny)) && online_tasks=("${ONLINE_TASKS[0]}")
  for task in "${online_tasks[@]}"; do
    for ((seed = 1; seed <= seeds; seed++)); do
      add_job online som "$task" "$seed" "$ROOT/algos/som.py" --env-id "$task" --seed "$seed" \
        --total-timesteps "$online_steps" --eval-interval "$(at_least_1 $((online_steps / evals)))" \
        --eval-episodes "$eval_episodes" --log-interval "$(at_least_1 $((online_steps / 20)))"
    done
  done
  if (($(wc -l <"$out/learn_jobs.tsv.tmp") == 1)); then
    rm "$out/learn_jobs.tsv.tmp"
    die "--only '$only' matches no job"
  fi
  mv "$out/learn_jobs.tsv.tmp" "$out/learn_jobs.tsv"
  echo "$sweep" >"$out/learn_sweep.txt"
  echo "[learn] $sweep: $((${#todo_offline[@]} + ${#todo_online[@]})) to run, $skipped finished before (skipped)"

  local dataset
  for dataset in $(printf '%s\n' ${needed[@]+"${needed[@]}"} | sort -u); do
    have_dataset "$dataset" || write_dataset_script "$dataset"
  done
  if ((slurm)); then
    write_slurm
  else
    run_here
  fi
}

parse_learn_args() {  # the sweep's settings, as globals
  seeds="" steps="" online_steps="" episodes="" eval_episodes="" evals="" workers="" out=results only=""
  tiny=0 report_only=0 slurm=0 submit=0 sbatch_args="" job_args=()
  while (($#)); do
    case $1 in
      --tiny | --report-only | --slurm | --submit) ;;
      *) (($# >= 2)) || die "$1 needs a value (see bash benchmark.sh help)" ;;
    esac
    case $1 in
      --seeds) seeds=$2 ;;
      --steps) steps=$2 ;;
      --online-steps) online_steps=$2 ;;
      --episodes) episodes=$2 ;;
      --eval-episodes) eval_episodes=$2 ;;
      --evals) evals=$2 ;;
      --workers) workers=$2 ;;
      --out) out=$2 ;;
      --only) only=$2 ;;
      --job-args) [[ $2 == *:* ]] || die "--job-args takes 'GLOB:FLAGS', got '$2'"; job_args+=("$2") ;;
      --sbatch) sbatch_args=$2 ;;
      --tiny) tiny=1 ;;
      --report-only) report_only=1 ;;
      --slurm) slurm=1 ;;
      --submit) submit=1 ;;
      *) die "unknown learn option '$1' (see bash benchmark.sh help)" ;;
    esac
    case $1 in
      --tiny | --report-only | --slurm | --submit) shift ;;
      *) shift 2 ;;
    esac
  done
  ((submit <= slurm)) || die "--submit needs --slurm"
  mkdir -p "$out"
  out=$(cd "$out" && pwd)
  ep_steps=1001  # stored rows per dataset episode, as in OGBench's datasets
  if ((tiny)); then
    : "${seeds:=1}" "${steps:=20}" "${online_steps:=200}" "${episodes:=2}" "${eval_episodes:=1}" "${evals:=1}"
    ep_steps=60
  else
    : "${seeds:=3}" "${steps:=100000}" "${online_steps:=100000}" "${episodes:=1000}" "${eval_episodes:=20}"
    : "${evals:=10}"
  fi
  : "${workers:=$(nproc)}"
  local name value
  for name in seeds steps online_steps episodes eval_episodes evals workers; do
    value=${!name}
    [[ $value =~ ^[1-9][0-9]*$ ]] || die "--${name//_/-} must be a positive integer, got '$value'"
  done
  threads=$(at_least_1 $(($(nproc) / workers)))
  data_dir="$out/data/ogbench-${episodes}x${ep_steps}"
  umaze_steps=$UMAZE_STEPS bandit_episodes=$BANDIT_EPISODES
  ((tiny)) && umaze_steps=$ep_steps bandit_episodes=200
  # The command that reproduces this sweep, for the reports.
  sweep="bash benchmark.sh learn --seeds $seeds --steps $steps --online-steps $online_steps --episodes $episodes"
  sweep+=" --eval-episodes $eval_episodes --evals $evals"
  ((tiny)) && sweep+=" --tiny"
  [[ -n $only ]] && sweep+=" --only '$only'"
  for value in ${job_args[@]+"${job_args[@]}"}; do sweep+=" --job-args '$value'"; done
  todo_offline=() todo_online=() needed=() make_scripts=() skipped=0
}

at_least_1() { echo $(($1 > 0 ? $1 : 1)); }

add_job() {  # kind algo task seed script flags...: list the job in learn_jobs.tsv; write its job.sh unless finished
  local kind=$1 algo=$2 task=$3 seed=$4
  shift 4
  local name="${algo}__${task}__s${seed}"
  [[ -z $only || $name =~ $only ]] || return 0
  local dir="$out/runs/$name" pattern command minari_export=""
  local -a flags=("$@") extra
  if ((tiny)); then
    read -ra extra <<<"$(tiny_flags "$algo")"
    flags+=("${extra[@]}")
  fi
  if [[ $algo == bc ]]; then  # after the tiny flags: bc acts with the plain one-step policy
    flags+=(--eta 0 --eval-candidates 1 --exp-name bc)
  fi
  for pattern in ${job_args[@]+"${job_args[@]}"}; do
    # shellcheck disable=SC2053  # GLOB is matched as a pattern on purpose
    if [[ $name == ${pattern%%:*} ]]; then
      read -ra extra <<<"${pattern#*:}"
      flags+=("${extra[@]}")
    fi
  done
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$algo" "$task" "$seed" "$kind" "$dir" >>"$out/learn_jobs.tsv.tmp"
  command=$(printf '%q ' "${flags[@]}")
  [[ $kind == offline && $(dataset_of "$task") == minari-* ]] &&
    minari_export="export MINARI_DATASETS_PATH=$(printf '%q' "$(minari_dir_of "$(dataset_of "$task")")")"
  [[ $task == bandit-* ]] && minari_export+="; export PYTHONPATH=$(printf '%q' "$ROOT/scripts")"  # the env's module
  if [[ -f $dir/DONE ]]; then
    if [[ $(<"$dir/DONE") == "$command" ]]; then
      skipped=$((skipped + 1))
      return 0
    fi
    echo "[learn] $name finished before with another command: it runs again"
  fi
  mkdir -p "$dir"
  printf '%s' "$command" >"$dir/command"
  cat >"$dir/job.sh" <<EOF
#!/usr/bin/env bash
# One job of '$sweep', written by benchmark.sh: the script writes runs/ here, its output goes to train.log.
cd "\$(dirname "\$0")" || exit 1
$minari_export
rm -rf runs DONE exit_code wall_s train.log
start=\$SECONDS
$(printf '%q ' "$PY")$command>train.log 2>&1
rc=\$?
echo "\$rc" >exit_code
echo \$((SECONDS - start)) >wall_s
if [ "\$rc" -eq 0 ]; then
  cp command DONE
  echo "[learn] done    $name (\$((SECONDS - start)) s)"
else
  echo "[learn] FAILED  $name: exit \$rc, log \$PWD/train.log"
fi
exit \$((rc != 0))
EOF
  if [[ $kind == offline ]]; then
    todo_offline+=("$dir/job.sh")
    needed+=("$(dataset_of "$task")")
  else
    todo_online+=("$dir/job.sh")
  fi
}

write_dataset_script() {  # dataset: the script that generates it (seed 0; OGBench's with all workers)
  local dataset=$1 file="$data_dir/make_$1.sh" command
  mkdir -p "$data_dir"
  if [[ $dataset == minari-* ]]; then
    command="MINARI_DATASETS_PATH=$(printf '%q' "$(minari_dir_of "$dataset")") "
    if [[ $dataset == minari-bandit-* ]]; then
      command+="$(printf '%q ' "$PY" "$ROOT/scripts/bandit.py" --num-episodes "$bandit_episodes" --seed 0)"
    elif [[ $dataset == minari-invertedpendulum-* ]]; then
      command+="$(printf '%q ' "$PY" "$ROOT/scripts/make_pendulum_dataset.py" --num-episodes "$episodes" \
        --random-prob "$MIXED_RANDOM_PROB" --seed 0)"
    else  # noisy waypoint-controller episodes of the eval env's length
      command+="$(printf '%q ' "$PY" "$ROOT/scripts/make_minari_dataset.py" --dataset-id "$UMAZE" --policy waypoint \
        --num-episodes "$episodes" --max-episode-steps "$umaze_steps" --seed 0)"
      [[ $dataset == *-mixed ]] && command+="--random-prob $MIXED_RANDOM_PROB "
    fi
  else
    command="$(printf '%q ' "$PY" "$ROOT/scripts/make_ogbench_dataset.py" --env-name "$dataset" --num-episodes \
      "$episodes" --max-episode-steps "$ep_steps" --seed 0 --dataset-dir "$data_dir")--num-workers"
    command+=" \"\${SLURM_CPUS_PER_TASK:-$workers}\""
  fi
  cat >"$file" <<EOF
#!/usr/bin/env bash
# Generates $dataset for '$sweep' (written by benchmark.sh); output in make_$dataset.log.
$command --overwrite >$(printf '%q' "$data_dir/make_$dataset.log") 2>&1
EOF
  make_scripts+=("$file")
}

run_here() {  # the datasets side by side, then a pool of W jobs (the long online ones first), then the reports
  local i
  local -a pids=() todo=(${todo_online[@]+"${todo_online[@]}"} ${todo_offline[@]+"${todo_offline[@]}"})
  for i in "${!make_scripts[@]}"; do
    echo "[learn] generating $(basename "${make_scripts[$i]}" .sh | cut -c6-) (log in $data_dir)"
    bash "${make_scripts[$i]}" &
    pids+=($!)
  done
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || die "dataset generation failed, see ${make_scripts[$i]%.sh}.log"
  done
  if ((${#todo[@]})); then  # job.sh reports its job and exits 1 on failure, which xargs carries on past
    echo "[learn] running ${#todo[@]} job(s), $workers at a time, $threads CPU thread(s) each"
    printf '%s\0' "${todo[@]}" | OMP_NUM_THREADS=$threads xargs -0 -n 1 -P "$workers" bash || true
  fi
  "$PY" scripts/aggregate.py learn "$out"
}

write_slurm() {  # one job array per sweep (datasets, offline, online); with --submit, offline waits for datasets
  mkdir -p "$out/slurm/logs"
  rm -f "$out"/slurm/*.sbatch
  local datasets="" offline="" online="" id
  local -a dependency=()
  ((${#make_scripts[@]} == 0)) || datasets=$(write_array datasets 8 "${make_scripts[@]}")
  ((${#todo_offline[@]} == 0)) || offline=$(write_array offline 2 "${todo_offline[@]}")
  ((${#todo_online[@]} == 0)) || online=$(write_array online 2 "${todo_online[@]}")
  if ((!submit)); then
    local hint=""
    [[ -n $datasets ]] && hint+="id=\$(sbatch --parsable $datasets); "
    [[ -n $offline ]] && hint+="sbatch ${datasets:+--dependency=afterok:\$id }$offline; "
    [[ -n $online ]] && hint+="sbatch $online"
    echo "[learn] not submitted; to submit: $hint"
  else
    if [[ -n $datasets ]]; then
      id=$(sbatch --parsable "$datasets")
      echo "[learn] submitted $datasets: job $id"
      dependency=("--dependency=afterok:${id%%;*}")
    fi
    if [[ -n $offline ]]; then
      id=$(sbatch --parsable ${dependency[@]+"${dependency[@]}"} "$offline")
      echo "[learn] submitted $offline: job $id"
    fi
    if [[ -n $online ]]; then
      id=$(sbatch --parsable "$online")
      echo "[learn] submitted $online: job $id"
    fi
  fi
  echo "[learn] when the arrays have finished: bash benchmark.sh learn --report-only --out $out"
}

write_array() {  # name cpus scripts...: a Slurm array script with one task per script; prints its path
  local name=$1 cpus=$2 arg
  shift 2
  local file="$out/slurm/$name.sbatch"
  {
    echo '#!/usr/bin/env bash'
    echo "#SBATCH --job-name=meanflow-rl-$name"
    echo "#SBATCH --array=0-$(($# - 1))"
    [[ $sbatch_args == *--cpus-per-task* ]] || echo "#SBATCH --cpus-per-task=$cpus"
    echo "#SBATCH --output=$out/slurm/logs/${name}_%A_%a.out"
    for arg in $sbatch_args; do echo "#SBATCH $arg"; done
    echo "# Written by '$sweep --slurm': one array task per script."
    echo 'scripts=('
    printf '  %q\n' "$@"
    echo ')'
    cat <<'EOF'
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
bash "${scripts[$SLURM_ARRAY_TASK_ID]}"
EOF
  } >"$file"
  echo "[learn] wrote $file ($# array tasks)" >&2
  echo "$file"
}

main() {
  case "${1:-}" in
    speed) shift; speed "$@" ;;
    gpu) shift; exec "$PY" scripts/gpu_check.py "$@" ;;
    learn) shift; learn "$@" ;;
    help | -h | --help) usage ;;
    *) usage >&2; exit 2 ;;
  esac
}

# bash reads a script as it runs it; main and exit are read together, so editing this file (git pull) while a sweep
# runs cannot make the running sweep execute a half-read line
main "$@"; exit
