"""A turn and the life of its reply, in the process that saves it:

    consumers.py  the socket: connect (checked after the handshake), frames in, the group's frames out
    routing.py    its URL and the authentication around it
    protocol.py   client frames: parsing, validation, rate limits
    turns.py      a turn saved (question and streaming reply row) in one transaction
    replies.py    the reply task: generation, chunks, partial saves, stop, the final save
    handoff.py    a reply handed to a model worker process instead
    frames.py     what travels to the browser, rendered by the page's own templates
    markdown.py   model output as safe HTML

Imports access, delivery, inspection (the exact prompt's notice, a branch's start), forms (the model
menu), errors, metrics and models; the API, the model worker and the pages import it. It reaches
modelhub through modelhub.api only.
"""
