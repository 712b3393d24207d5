from nodes.permissions import is_operator


def roles(request):
    user = getattr(request, "user", None)
    return {"can_operate": bool(user and user.is_authenticated and is_operator(user))}
