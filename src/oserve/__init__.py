"""oserve: workload-orchestrated LLM serving (an implementation of OServe, arXiv 2602.12151).

Layers follow the data: common -> workload -> costmodel -> planner -> forecast -> switching -> sim ->
runtime -> cli. Each package imports only from the ones before it.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
