# uv does not read pip's configuration: uv_flags (an array) holds the machine's pip settings (local wheel
# folders, mirrors) as uv flags. The machine's own mirrors are trusted as pip trusts them: with extra
# indexes, uv takes the best match across all of them. Sourced by setup.sh and lock.sh.
_pip_setting() { "${PY:-python3}" -m pip config list 2>/dev/null | sed -n "s/^[a-z:]*\.$1='\(.*\)'$/\1/p" | tail -n 1; }
uv_flags=()
for _link in ${PIP_FIND_LINKS:-$(_pip_setting find-links)}; do uv_flags+=(--find-links "$_link"); done
_extra=${PIP_EXTRA_INDEX_URL:-$(_pip_setting extra-index-url)}
for _url in $_extra; do uv_flags+=(--extra-index-url "$_url"); done
[ -z "$_extra" ] || uv_flags+=(--index-strategy unsafe-best-match)
