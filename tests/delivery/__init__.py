"""Getting a reply to its pages across processes (conversations.delivery, the writers): the deployed
setup live, with its processes started, stopped and killed."""
