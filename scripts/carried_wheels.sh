# Sourced by the GPU scripts (gpu_lane.sh, issue16_gpu.sh): the device machine has no network, so the packages it
# lacks travel as wheels in .whl/ and are installed into /tmp/site, put first on PYTHONPATH. Expects $PY.
# The versions are the default lane's pins (requirements/default.txt, extras.txt).
if [ -d .whl ] && [ "${GPU_LANE_INSTALL:-1}" = 1 ]; then
    wheels=()
    for pkg in diffusers-0.42.1 bitsandbytes-0.50.2 torchao-0.17.0 huggingface_hub-1.33.0 safetensors-0.8.0 peft-0.21.2; do
        for w in .whl/$pkg-*.whl; do [ -f "$w" ] && wheels+=("$w"); done
    done
    if [ ${#wheels[@]} -gt 0 ]; then
        echo "installing carried wheels: ${wheels[*]}"
        $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "${wheels[@]}" || exit 1
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
fi
