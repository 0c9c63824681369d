from django.urls import path

from feedback.views import accounts, pages

urlpatterns = [
    path("", pages.home, name="home"),
    path("signup/", accounts.signup, name="signup"),
    path("annotate/", pages.annotate, name="annotate"),
    path("manage/", pages.manage, name="manage"),
]
