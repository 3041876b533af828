"""Third-party runtimes that lowbit checks its numbers and files against (llama.cpp)."""
