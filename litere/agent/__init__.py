"""The ReAct agent: tool calls (tools.py), trajectory records (trajectory.py), the loop over the sampler (loop.py)
and rollouts across worker processes (processes.py)."""
from .loop import (CONTEXT_LIMIT_REMINDER, TERMINATIONS, Agent, AgentConfig, RolloutStats, print_progress,
                   question_seed, turn_answers)
from .processes import AgentProcesses, WorkerError, WorkerPool
from .tools import MALFORMED_CALL, TOOL_ERROR, ToolCall, execute_tool, parse_tool_call
from .trajectory import (SAMPLING_FIELDS, ToolCallRecord, Trajectory, check_trainable, read_trajectories,
                         write_trajectories)

__all__ = ["CONTEXT_LIMIT_REMINDER", "MALFORMED_CALL", "SAMPLING_FIELDS", "TERMINATIONS", "TOOL_ERROR", "Agent",
           "AgentConfig", "AgentProcesses", "RolloutStats", "ToolCall", "ToolCallRecord", "Trajectory", "WorkerError",
           "WorkerPool", "check_trainable", "execute_tool", "parse_tool_call", "print_progress", "question_seed",
           "read_trajectories", "turn_answers", "write_trajectories"]
