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


# TPU scripts: validates the slice flags and sets NAME, ZONE, ACCELERATOR, VERSION and WORKDIR.
check_tpu_flags() {
  require name zone accelerator config workdir tfds_data_dir
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
  [[ $WORKDIR == gs://* ]] ||
    die "--workdir='$WORKDIR': must be a gs:// path (every worker writes checkpoints there)"
  [[ ${FLAGS[tfds_data_dir]} == gs://* ]] ||
    die "--tfds_data_dir='${FLAGS[tfds_data_dir]}': must be a gs:// path readable by all workers"
  [[ -f $REPO_DIR/${FLAGS[config]%%:*} ]] ||
    die "--config='${FLAGS[config]}': no file ${FLAGS[config]%%:*} under $REPO_DIR"
  [[ -z ${FLAGS[ref]} || -n ${FLAGS[repo]} ]] || die "--ref needs --repo"
}
