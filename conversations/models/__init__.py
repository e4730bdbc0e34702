"""The app's models, one subject per module, gathered here so Django registers them all and
`from conversations.models import Conversation` works everywhere.

    chat.py       Conversation: a conversation's tree of messages and every state change of a turn
    message.py    Message: a message, and the end of a reply (partial saves, finish, orphans)
    comparison.py Comparison: one question answered by two model choices, and the verdict
    feedback.py   Feedback, FeedbackTag, Preference, and Verdict (the one vote enum): what users
                  say about answers
    privacy.py    PrivacySettings: each user's training-consent default
    datasets.py   DatasetSnapshot: what a training-data export wrote (conversations/training_data/)
    arena.py      Arena, ArenaMatch: blind votes on a candidate adapter (conversations/arena/)
    evaluation.py EvaluationReport: a base and its adapters scored side by side on a snapshot's held-out rows
    api_key.py    ApiKey: how a tool calling the OpenAI-compatible API acts as its user
    review.py     Review: a reviewer's decision on one feedback item (the review queue: review/queue.py)
    usage.py      Quota: an admin's limits for a user or a group; UnkeptCallUsage: what an API call that
                  kept nothing used (conversations/access/quotas.py counts both)

Modules of this package import each other by their own names (`conversations.models.chat`),
never this package.
"""

from conversations.models.api_key import ApiKey
from conversations.models.arena import Arena, ArenaMatch
from conversations.models.chat import Conversation
from conversations.models.comparison import Comparison
from conversations.models.datasets import DatasetSnapshot
from conversations.models.evaluation import EvaluationReport
from conversations.models.feedback import Feedback, FeedbackTag, Preference, Verdict
from conversations.models.message import Message
from conversations.models.privacy import PrivacySettings
from conversations.models.review import Review
from conversations.models.usage import Quota, UnkeptCallUsage

__all__ = [
    "ApiKey",
    "Arena",
    "ArenaMatch",
    "Comparison",
    "Conversation",
    "DatasetSnapshot",
    "EvaluationReport",
    "Feedback",
    "FeedbackTag",
    "Message",
    "Preference",
    "PrivacySettings",
    "Quota",
    "Review",
    "UnkeptCallUsage",
    "Verdict",
]
