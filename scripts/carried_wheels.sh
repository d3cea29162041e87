# Sourced by the GPU scripts (gpu_lane.sh, issue16_gpu.sh): the device machine has no network, so the packages it
# lacks travel as wheels in .whl/ (scripts/device_wheels.sh fills it) and are installed into /tmp/site, put first on
# PYTHONPATH. The fluxnb wheel there is left out: these scripts run the checkout's own fluxnb (l4_rehearsal.sh
# installs the wheel). Expects $PY.
if [ -d .whl ] && [ "${GPU_LANE_INSTALL:-1}" = 1 ]; then
    wheels=()
    for w in .whl/*.whl; do
        case "$(basename "$w")" in fluxnb-*) ;; *) [ -f "$w" ] && wheels+=("$w") ;; esac
    done
    if [ ${#wheels[@]} -gt 0 ]; then
        echo "installing ${#wheels[@]} carried wheels into /tmp/site"
        $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "${wheels[@]}" || exit 1
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
fi
