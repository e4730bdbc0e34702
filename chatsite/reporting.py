"""What error reports (the 500 e-mails to ADMINS, the DEBUG page) leave out: no API key in clear.

Django's own filter already hides request headers and settings by name: its pattern
(API|AUTH|TOKEN|KEY|SECRET|PASS|SIGNATURE|HTTP_COOKIE) covers HTTP_AUTHORIZATION, the header a key
comes in. It does not look at the values of a traceback's variables: the /v1 view that read the
header, the manager method that passed the key on (`args`), `authenticate(raw)` itself would all
show the key in clear. This filter finds a key by its look (`KEY_PATTERN`) in every variable and
shows it redacted, always: a key has no business in a report, DEBUG or not. (A key pasted into a
URL would still show in the report's URL and GET items, which no filter reaches: a key belongs
in the Authorization header.)
"""

from django.template.defaultfilters import pprint
from django.views.debug import SafeExceptionReporterFilter

from conversations.models.api_key import KEY_PATTERN, PREFIX


def redacted(text):
    return KEY_PATTERN.sub(PREFIX + SafeExceptionReporterFilter.cleansed_substitute, text)


class Shown:
    """A variable's text, as the report shows it (the report pretty-prints values: this one prints as is)."""

    def __init__(self, text):
        self.text = text

    def __repr__(self):
        return self.text


class KeyRedactingFilter(SafeExceptionReporterFilter):
    def get_traceback_frame_variables(self, request, tb_frame):
        """Each variable's printed text, keys redacted: printed once here, as the report would."""
        variables = super().get_traceback_frame_variables(request, tb_frame)
        return [(name, Shown(redacted(pprint(value)))) for name, value in variables]
