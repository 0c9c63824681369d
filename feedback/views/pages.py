"""Role landing pages: home for everyone signed in, the annotator and admin areas."""

from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import Group, User
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from feedback.roles import Role, role_required
from feedback.services.health import check_broker, check_database


@login_required
def home(request: HttpRequest) -> HttpResponse:
    return render(request, "feedback/home.html")


@role_required(Role.ANNOTATOR)
def annotate(request: HttpRequest) -> HttpResponse:
    return render(request, "feedback/annotate.html")


@role_required(Role.ADMIN)
def manage(request: HttpRequest) -> HttpResponse:
    role_counts = dict(
        Group.objects.filter(name__in=[r.value for r in Role])
        .annotate(n=Count("user"))
        .values_list("name", "n")
    )
    context = {
        "role_counts": [(r.value, role_counts.get(r.value, 0)) for r in Role],
        "user_count": User.objects.count(),
        "health": {"database": check_database(), "broker": check_broker()},
    }
    return render(request, "feedback/manage.html", context)
