#!/bin/bash
# kconfig.sh apply|verify FRAGMENT  (run inside a kernel tree)
#   apply:  turns every line of FRAGMENT into a scripts/config call.
#   verify: checks that .config has every value FRAGMENT asks for; prints
#           each mismatch and exits 1 if there is any.
set -euo pipefail
mode=$1 frag=$2
lines() { sed -e 's/#.*//' -e 's/[[:space:]]*$//' "$frag" | grep -E '^CONFIG_[A-Za-z0-9_]+=' ; }
case $mode in
apply)
	args=()
	while IFS= read -r l; do
		k=${l%%=*} v=${l#*=}
		k=${k#CONFIG_}
		case $v in
		y) args+=(--enable "$k") ;;
		n) args+=(--disable "$k") ;;
		m) echo "kconfig.sh: $k=m: modules are off" >&2; exit 1 ;;
		\"*) args+=(--set-str "$k" "$(eval echo "$v")") ;;
		*) args+=(--set-val "$k" "$v") ;;
		esac
	done < <(lines)
	./scripts/config --file .config "${args[@]}"
	;;
verify)
	bad=0
	while IFS= read -r l; do
		k=${l%%=*} v=${l#*=}
		have=$(grep -E "^$k=" .config | head -1 | cut -d= -f2- || true)
		if [ "$v" = n ]; then
			[ -z "$have" ] || [ "$have" = n ] && continue
		else
			[ "$have" = "$v" ] && continue
		fi
		echo "kconfig mismatch: $k: want ${v}, have ${have:-<not set>}" >&2
		bad=1
	done < <(lines)
	exit $bad
	;;
*) echo "usage: kconfig.sh apply|verify FRAGMENT" >&2; exit 2 ;;
esac
