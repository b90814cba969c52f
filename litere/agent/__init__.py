"""The ReAct agent: tool calls (tools.py), trajectory records (trajectory.py) and the loop over the sampler
(loop.py)."""
from .loop import CONTEXT_LIMIT_REMINDER, TERMINATIONS, Agent, AgentConfig, RolloutStats, print_progress
from .tools import TOOL_ERROR, ToolCall, execute_tool, parse_tool_call
from .trajectory import ToolCallRecord, Trajectory, read_trajectories, write_trajectories

__all__ = ["CONTEXT_LIMIT_REMINDER", "TERMINATIONS", "TOOL_ERROR", "Agent", "AgentConfig", "RolloutStats", "ToolCall",
           "ToolCallRecord", "Trajectory", "execute_tool", "parse_tool_call", "print_progress", "read_trajectories",
           "write_trajectories"]
