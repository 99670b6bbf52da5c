"""The dock's worker process: TensorFlow, Keras and the models live there, never in napari's process.

napari's process is shared with every other plugin the user has; TensorFlow is large, holds Python's lock in
long calls and can crash. So the dock starts one worker process (spawned, not forked) when it opens and sends it
requests — predict, a fine-tuning round, Live bursts, export — as the core's own use cases (tasks.py); arrays
travel through shared memory (channel.py). The dock's side is client.py; the process's loop is server.py.
None of these modules imports Qt or napari. The CLI and the Python API call the core directly, in one process.
"""
